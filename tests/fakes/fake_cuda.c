/*
 * A fake CUDA driver (libcuda + a little NVML) for CPU-only CI, with the real driver's teeth.
 *
 * Like driver 580 (../../bench/results/gpu_front.md, the reference's gpu-device.md), the CUDA state of a process
 * lives in that process: fakeCudaRegister() starts a "driver thread" in the workload that owns its state (RUNNING,
 * LOCKED, CHECKPOINTED) and answers the checkpoint API through a mailbox, a small file of this fake's state dir that
 * the workload maps shared. So:
 *  - every call into a process that is frozen or stopped blocks until it runs again (its driver thread cannot
 *    answer), as measured on driver 580; only GetRestoreThreadId answers without the process;
 *  - while RUNNING or LOCKED the process holds an fd on, and a shared mapping of, the device node named by
 *    $FAKE_CUDA_DEVICE (the tests point it at a block device node: CRIU refuses to dump that mapping with
 *    "Can't handle non-regular mapping", as it refuses /dev/nvidia* mappings); Checkpoint drops both, Restore maps
 *    them back, so CRIU can dump exactly the processes gpucr checkpointed first;
 *  - a restored process keeps the state its image was dumped in (CRIU restores the driver thread's memory);
 *  - the workload's work (fakeCudaBegin/fakeCudaEnd around each tick, "a kernel") cannot start unless RUNNING;
 *    Lock stops new work and waits up to timeoutMs for the work in flight (CUDA_ERROR_TIMEOUT otherwise, state
 *    RUNNING again);
 *  - Restore's GPU pairs, when given, must be one-to-one and cover every GPU ($FAKE_CUDA_GPUS, default 2) with
 *    valid UUIDs (CUDA_ERROR_INVALID_VALUE otherwise).
 *
 * A caller finds a process's mailbox in /proc/PID/maps. The mailbox names the pid namespace of its owner: a copy of a
 * process restored into a new container (new pid namespace) moves to a fresh mailbox, and callers wait for that
 * move, so an original that still runs and its restored copy never share one.
 *
 * The state dir is "<this library's path>.d" when that directory exists (so every process, a CRIU front started by a
 * runtime whose environment the tests do not control included, agrees whatever its environment), else
 * $FAKE_CUDA_DIR, else /tmp/fake-cuda. A container workload (fake_cuda_app.c, linked statically with this file) sees
 * it where $FAKE_CUDA_DIR says.
 *
 * Failures are injected per step with a file $FAKE_CUDA_DIR/fail-<step> holding a CUresult (add " once" to fire a
 * single time); steps: lock, checkpoint, restore, unlock, get-state. $FAKE_CUDA_DRIVER_VERSION sets
 * cuDriverGetVersion (default 13000).
 *
 * Timing hooks, for tests of concurrency: a file $FAKE_CUDA_DIR/delay-<step> holding milliseconds makes each call of
 * that step take that much longer (as a copy of GPU memory would; the caller's thread sleeps, outside any lock); when
 * $FAKE_CUDA_DIR/trace exists, every lock/checkpoint/restore/unlock call appends one line to it:
 * "<step> <pid> <start us> <end us> <THP mode> <CUresult>" (CLOCK_MONOTONIC, caller side; the THP mode is the selected one of
 * $FAKE_CUDA_THP_KNOB, default /sys/kernel/mm/transparent_hugepage/enabled, read as the call starts).
 *
 * Like driver 580, the fake does not export cuCheckpointOperationComplete (CUDA 13.4's CustomStorage); built with
 * -DFAKE_CUSTOM_STORAGE (libfakecuda-cs.so) it does, and the call fails with CUDA_ERROR_NOT_SUPPORTED.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <dlfcn.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { ST_RUNNING = 0, ST_LOCKED = 1, ST_CHECKPOINTED = 2, ST_FAILED = 3 };
enum {
    CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_NOT_INITIALIZED = 3, CUDA_ERROR_OPERATING_SYSTEM = 304,
    CUDA_ERROR_ILLEGAL_STATE = 401, CUDA_ERROR_NOT_FOUND = 500, CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_TIMEOUT = 909, CUDA_ERROR_UNKNOWN = 999
};
enum { OP_GET_STATE = 1, OP_LOCK, OP_CHECKPOINT, OP_RESTORE, OP_UNLOCK };

typedef struct { unsigned char bytes[16]; } CUuuid;
typedef struct { CUuuid oldUuid; CUuuid newUuid; } CUcheckpointGpuPair;
typedef struct {
    CUcheckpointGpuPair *gpuPairs;
    unsigned int gpuPairsCount;
    char reserved[52 - sizeof(CUcheckpointGpuPair *)];
    unsigned long long reserved1;
} CUcheckpointRestoreArgs;
typedef struct { unsigned int timeoutMs; unsigned int reserved0; unsigned long long reserved1[7]; } CUcheckpointLockArgs;

#define MB_MAGIC 0x46434d42u /* "BMCF" */
#define MB_SIZE 4096
/* the mailbox: fixed offsets (tests/fakes/cuda.py reads the mirror fields) */
typedef struct {
    uint32_t magic;     /* 0 */
    uint32_t state;     /* 4: mirror of the owner's state */
    uint32_t busy;      /* 8: work in flight */
    uint32_t mapped;    /* 12: the device is mapped */
    uint64_t bytes;     /* 16 */
    uint64_t owner_ns;  /* 24: inode of the owner's pid namespace */
    char gpu[64];       /* 32 */
    uint32_t req_seq;   /* 96 */
    uint32_t req_op;    /* 100 */
    uint32_t req_arg;   /* 104 */
    uint32_t resp_seq;  /* 108 */
    int32_t resp_rc;    /* 112 */
    uint32_t resp_state;/* 116 */
    char req_gpu[64];   /* 120 */
} mbox_t;

static const char *dir(void) {
    static char beside[4096];
    static int has_beside = -1;
    if (has_beside < 0) {
        Dl_info info;
        struct stat st;
        has_beside = 0;
        if (dladdr((void *)dir, &info) && info.dli_fname && info.dli_fname[0] == '/') {
            snprintf(beside, sizeof beside, "%s.d", info.dli_fname);
            has_beside = stat(beside, &st) == 0 && S_ISDIR(st.st_mode);
        }
    }
    if (has_beside) return beside;
    const char *d = getenv("FAKE_CUDA_DIR");
    return d && *d ? d : "/tmp/fake-cuda";
}

static void fake_uuid(int index, char *out, size_t n) {
    snprintf(out, n, "GPU-00000000-0000-4000-8000-%012d", index);
}

static int ngpus(void) {
    const char *e = getenv("FAKE_CUDA_GPUS");
    return e && *e ? atoi(e) : 2;
}

static void nap_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* the inode of a pid namespace: "self" or a pid */
static uint64_t pidns_of(const char *who) {
    char p[320];
    struct stat st;
    snprintf(p, sizeof p, "/proc/%s/ns/pid", who);
    return stat(p, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* ==== workload side: the driver thread that owns this process's CUDA state ==== */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int registered, state, busy, devfd;
    void *devmap;
    unsigned long long bytes;
    char gpu[64], device[1024];
    mbox_t *mb;
    uint64_t ns;
} g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, ST_RUNNING, 0, -1, NULL, 0, "", "", NULL, 0};

static int map_device(void) {
    int fd = open(g.device, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { close(fd); return -1; }
    madvise(p, 4096, MADV_DONTFORK);
    g.devfd = fd;
    g.devmap = p;
    return 0;
}

static void unmap_device(void) {
    if (g.devmap) munmap(g.devmap, 4096);
    if (g.devfd >= 0) close(g.devfd);
    g.devmap = NULL;
    g.devfd = -1;
}

/* a fresh mailbox file, mapped shared (and not into forked children: they hold no CUDA state) */
static mbox_t *new_mailbox(void) {
    unsigned char rnd[8];
    char p[4096];
    if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd) return NULL;
    mkdir(dir(), 0700);
    snprintf(p, sizeof p, "%s/mb-%02x%02x%02x%02x%02x%02x%02x%02x", dir(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4],
             rnd[5], rnd[6], rnd[7]);
    int fd = open(p, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return NULL;
    if (ftruncate(fd, MB_SIZE) != 0) { close(fd); return NULL; }
    void *m = mmap(NULL, MB_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return NULL;
    madvise(m, MB_SIZE, MADV_DONTFORK);
    mbox_t *mb = m;
    mb->owner_ns = g.ns;
    __atomic_store_n(&mb->magic, MB_MAGIC, __ATOMIC_SEQ_CST);
    return mb;
}

/* mirror the state for callers that must not wait on the process (NVML, tests); caller holds g.mu */
static void publish(void) {
    mbox_t *mb = g.mb;
    mb->state = (uint32_t)g.state;
    mb->busy = (uint32_t)g.busy;
    mb->mapped = g.devmap != NULL;
    mb->bytes = g.bytes;
    snprintf(mb->gpu, sizeof mb->gpu, "%s", g.gpu);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static int serve(uint32_t op, uint32_t arg, const char *new_gpu) {
    int rc = CUDA_SUCCESS;
    pthread_mutex_lock(&g.mu);
    switch (op) {
    case OP_GET_STATE: break;
    case OP_LOCK:
        if (g.state != ST_RUNNING) { rc = CUDA_ERROR_ILLEGAL_STATE; break; }
        g.state = ST_LOCKED; /* no new work from here; wait for the work in flight */
        if (g.busy) {
            uint64_t deadline = now_ms() + arg;
            while (g.busy) {
                if (arg && now_ms() >= deadline) break;
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 5000000;
                if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
                pthread_cond_timedwait(&g.cv, &g.mu, &ts);
            }
            if (g.busy) { g.state = ST_RUNNING; pthread_cond_broadcast(&g.cv); rc = CUDA_ERROR_TIMEOUT; }
        }
        break;
    case OP_CHECKPOINT:
        if (g.state != ST_LOCKED) { rc = CUDA_ERROR_ILLEGAL_STATE; break; }
        unmap_device(); /* GPU memory copied out; no device fd or mapping left (measured on driver 580) */
        g.state = ST_CHECKPOINTED;
        break;
    case OP_RESTORE:
        if (g.state != ST_CHECKPOINTED) { rc = CUDA_ERROR_ILLEGAL_STATE; break; }
        if (map_device() != 0) { rc = CUDA_ERROR_OPERATING_SYSTEM; break; }
        if (new_gpu[0]) snprintf(g.gpu, sizeof g.gpu, "%s", new_gpu);
        g.state = ST_LOCKED;
        break;
    case OP_UNLOCK:
        if (g.state != ST_LOCKED) { rc = CUDA_ERROR_ILLEGAL_STATE; break; }
        g.state = ST_RUNNING;
        pthread_cond_broadcast(&g.cv);
        break;
    default: rc = CUDA_ERROR_INVALID_VALUE;
    }
    publish();
    pthread_mutex_unlock(&g.mu);
    return rc;
}

static void *driver_thread(void *unused) {
    (void)unused;
    for (;;) {
        uint64_t ns = pidns_of("self");
        if (ns && ns != g.ns) { /* restored into another pid namespace: a mailbox of our own */
            mbox_t *mb = NULL;
            while (!(mb = new_mailbox())) nap_ms(50);
            mbox_t *old = g.mb;
            pthread_mutex_lock(&g.mu);
            g.ns = ns;
            mb->owner_ns = ns;
            g.mb = mb;
            publish();
            pthread_mutex_unlock(&g.mu);
            munmap(old, MB_SIZE);
        }
        mbox_t *mb = g.mb;
        uint32_t seq = __atomic_load_n(&mb->req_seq, __ATOMIC_SEQ_CST);
        if (seq != __atomic_load_n(&mb->resp_seq, __ATOMIC_SEQ_CST)) {
            char gpu[64];
            memcpy(gpu, mb->req_gpu, sizeof gpu);
            gpu[63] = 0;
            int rc = serve(mb->req_op, mb->req_arg, gpu);
            mb->resp_rc = rc;
            mb->resp_state = mb->state;
            __atomic_store_n(&mb->resp_seq, seq, __ATOMIC_SEQ_CST);
        } else {
            pthread_mutex_lock(&g.mu);
            publish();
            pthread_mutex_unlock(&g.mu);
            nap_ms(5);
        }
    }
    return NULL;
}

/* Register this process as a CUDA process holding `bytes` on GPU `gpu_index`: maps the device ($FAKE_CUDA_DEVICE)
 * and starts the driver thread. 0 on success, -1 (errno set) otherwise. */
int fakeCudaRegister(unsigned long long bytes, int gpu_index) {
    const char *dev = getenv("FAKE_CUDA_DEVICE");
    if (!dev || !*dev) { errno = EINVAL; return -1; }
    pthread_mutex_lock(&g.mu);
    if (g.registered) { pthread_mutex_unlock(&g.mu); errno = EALREADY; return -1; }
    snprintf(g.device, sizeof g.device, "%s", dev);
    g.bytes = bytes;
    fake_uuid(gpu_index, g.gpu, sizeof g.gpu);
    g.ns = pidns_of("self");
    int rc = map_device();
    if (rc == 0 && !(g.mb = new_mailbox())) { unmap_device(); rc = -1; }
    if (rc == 0) {
        publish();
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&t, &a, driver_thread, NULL) == 0 ? 0 : -1;
        g.registered = rc == 0;
    }
    pthread_mutex_unlock(&g.mu);
    return rc;
}

/* Start a unit of GPU work ("a kernel"): waits while the process is not RUNNING, as a CUDA call of a locked or
 * checkpointed process waits. Pair with fakeCudaEnd(); a process inside Begin/End is busy for Lock. */
void fakeCudaBegin(void) {
    pthread_mutex_lock(&g.mu);
    while (g.state != ST_RUNNING) pthread_cond_wait(&g.cv, &g.mu);
    g.busy++;
    pthread_mutex_unlock(&g.mu);
}

void fakeCudaEnd(void) {
    pthread_mutex_lock(&g.mu);
    if (g.busy > 0) g.busy--;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
}

/* ==== caller side: the driver API, as gpucr (or a test) calls it by host pid ==== */

/* the stat state letter of pid, or 0 if it is gone */
static char proc_state(int pid) {
    char p[64], buf[1024];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' ? rp[2] : 0;
}

static int alive(int pid) {
    char s = proc_state(pid);
    return s != 0 && s != 'Z' && s != 'X';
}

/* the mailbox file name ("mb-...") pid maps, into out; 0 when found */
static int mailbox_name(int pid, char *out, size_t n) {
    char p[64], line[8192];
    snprintf(p, sizeof p, "/proc/%d/maps", pid);
    FILE *f = fopen(p, "re");
    if (!f) return -1;
    int found = -1;
    while (found && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *slash = strrchr(line, '/');
        if (!slash || strncmp(slash + 1, "mb-", 3) != 0 || strchr(slash, ' ')) continue;
        snprintf(out, n, "%s", slash + 1);
        found = 0;
    }
    fclose(f);
    return found;
}

/* map pid's mailbox (its owner is pid's incarnation); NULL when pid holds no CUDA state */
static mbox_t *open_mailbox(int pid, char *path, size_t n) {
    char name[256];
    for (;;) {
        if (mailbox_name(pid, name, sizeof name) != 0) return NULL;
        snprintf(path, n, "%s/%s", dir(), name);
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) return NULL;
        void *m = mmap(NULL, MB_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (m == MAP_FAILED) return NULL;
        mbox_t *mb = m;
        char who[32];
        snprintf(who, sizeof who, "%d", pid);
        uint64_t ns = pidns_of(who);
        if (__atomic_load_n(&mb->magic, __ATOMIC_SEQ_CST) == MB_MAGIC && mb->owner_ns == ns) return mb;
        munmap(m, MB_SIZE); /* a restored copy whose driver thread has not moved to its own mailbox yet */
        if (!alive(pid)) return NULL;
        nap_ms(5);
    }
}

static int unknown_pid(int pid) { return proc_state(pid) ? CUDA_ERROR_NOT_INITIALIZED : CUDA_ERROR_OPERATING_SYSTEM; }

static int injected(const char *step) {
    char p[512], buf[64] = {0};
    snprintf(p, sizeof p, "%s/fail-%s", dir(), step);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    int rc = atoi(buf);
    /* "once": only the caller that removes the file fires it (concurrent callers all read it first) */
    if (strstr(buf, "once") && unlink(p) != 0) return 0;
    return rc;
}

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* the selected THP mode of the knob, into out ("?" when unreadable) */
static void thp_mode(char *out, size_t n) {
    const char *k = getenv("FAKE_CUDA_THP_KNOB");
    char buf[256] = {0};
    snprintf(out, n, "?");
    int fd = open(k && *k ? k : "/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (r <= 0) return;
    char *a = strchr(buf, '['), *b = a ? strchr(a, ']') : NULL;
    if (a && b) { *b = 0; snprintf(out, n, "%s", a + 1); return; }
    buf[strcspn(buf, " \n")] = 0;
    snprintf(out, n, "%s", buf);
}

/* the timing hooks: delay-<step> (ms) and the trace line */
static int delay_ms(const char *step) {
    char p[512], buf[32] = {0};
    snprintf(p, sizeof p, "%s/delay-%s", dir(), step);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? atoi(buf) : 0;
}

static void trace(const char *step, int pid, uint64_t t0, uint64_t t1, const char *thp, int rc) {
    char p[512], line[256];
    snprintf(p, sizeof p, "%s/trace", dir());
    int fd = open(p, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) return;
    int n = snprintf(line, sizeof line, "%s %d %llu %llu %s %d\n", step, pid, (unsigned long long)t0,
                     (unsigned long long)t1, thp, rc);
    if (write(fd, line, (size_t)n) < 0) {}
    close(fd);
}

static int call_once(int pid, const char *step, uint32_t op, uint32_t arg, const char *new_gpu, int *state);

/* one request to pid's driver thread; waits (forever, like the real driver) while the process cannot answer */
static int call(int pid, const char *step, uint32_t op, uint32_t arg, const char *new_gpu, int *state) {
    if (op == OP_GET_STATE) return call_once(pid, step, op, arg, new_gpu, state);
    char thp[32];
    thp_mode(thp, sizeof thp);
    uint64_t t0 = now_us();
    int ms = delay_ms(step);
    if (ms > 0) nap_ms(ms);
    int rc = call_once(pid, step, op, arg, new_gpu, state);
    trace(step, pid, t0, now_us(), thp, rc);
    return rc;
}

static int call_once(int pid, const char *step, uint32_t op, uint32_t arg, const char *new_gpu, int *state) {
    char path[4096], lk[4200];
    mbox_t *mb = open_mailbox(pid, path, sizeof path);
    if (!mb) return unknown_pid(pid);
    int rc = step ? injected(step) : 0;
    if (rc) { munmap(mb, MB_SIZE); return rc; }
    snprintf(lk, sizeof lk, "%s.lock", path); /* callers only: one request at a time per process */
    int lfd = open(lk, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd >= 0) flock(lfd, LOCK_EX);
    uint32_t seq = __atomic_load_n(&mb->resp_seq, __ATOMIC_SEQ_CST) + 1;
    mb->req_op = op;
    mb->req_arg = arg;
    snprintf(mb->req_gpu, sizeof mb->req_gpu, "%s", new_gpu ? new_gpu : "");
    __atomic_store_n(&mb->req_seq, seq, __ATOMIC_SEQ_CST);
    for (;;) {
        if (__atomic_load_n(&mb->resp_seq, __ATOMIC_SEQ_CST) == seq) {
            rc = mb->resp_rc;
            if (state) *state = (int)mb->resp_state;
            break;
        }
        if (!alive(pid)) { rc = CUDA_ERROR_OPERATING_SYSTEM; break; }
        nap_ms(1);
    }
    if (lfd >= 0) { flock(lfd, LOCK_UN); close(lfd); }
    munmap(mb, MB_SIZE);
    return rc;
}

/* ---- driver API ---- */
int cuInit(unsigned int flags) { (void)flags; return CUDA_SUCCESS; }

int cuDriverGetVersion(int *v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    const char *e = getenv("FAKE_CUDA_DRIVER_VERSION");
    *v = e && *e ? atoi(e) : 13000;
    return CUDA_SUCCESS;
}

static const char *err_name(int rc) {
    switch (rc) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_ILLEGAL_STATE: return "CUDA_ERROR_ILLEGAL_STATE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_OPERATING_SYSTEM: return "CUDA_ERROR_OPERATING_SYSTEM";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    case CUDA_ERROR_TIMEOUT: return "CUDA_ERROR_TIMEOUT";
    case CUDA_ERROR_UNKNOWN: return "CUDA_ERROR_UNKNOWN";
    default: return NULL;
    }
}

int cuGetErrorName(int rc, const char **s) {
    const char *n = err_name(rc);
    if (!s || !n) return CUDA_ERROR_INVALID_VALUE;
    *s = n;
    return CUDA_SUCCESS;
}

int cuGetErrorString(int rc, const char **s) {
    const char *n = err_name(rc);
    if (!s || !n) return CUDA_ERROR_INVALID_VALUE;
    *s = "fake driver error";
    return CUDA_SUCCESS;
}

int cuCheckpointProcessGetState(int pid, int *state) {
    if (!state) return CUDA_ERROR_INVALID_VALUE;
    return call(pid, "get-state", OP_GET_STATE, 0, NULL, state);
}

int cuCheckpointProcessLock(int pid, CUcheckpointLockArgs *args) {
    return call(pid, "lock", OP_LOCK, args ? args->timeoutMs : 0, NULL, NULL);
}

int cuCheckpointProcessCheckpoint(int pid, void *args) {
    (void)args;
    return call(pid, "checkpoint", OP_CHECKPOINT, 0, NULL, NULL);
}

int cuCheckpointProcessUnlock(int pid, void *args) {
    (void)args;
    return call(pid, "unlock", OP_UNLOCK, 0, NULL, NULL);
}

static void uuid_str(const CUuuid *u, char *out, size_t n) {
    const unsigned char *b = u->bytes;
    snprintf(out, n, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static int gpu_index(const char *uuid) {
    for (int i = 0; i < ngpus(); i++) {
        char u[64];
        fake_uuid(i, u, sizeof u);
        if (strcmp(u, uuid) == 0) return i;
    }
    return -1;
}

int cuCheckpointProcessRestore(int pid, CUcheckpointRestoreArgs *args) {
    char path[4096], new_gpu[64] = "";
    if (args && args->gpuPairsCount) {
        /* like driver 580: one-to-one pairs over every GPU of the node */
        int n = ngpus(), seen_old[64] = {0}, seen_new[64] = {0};
        if ((int)args->gpuPairsCount != n || n > 64 || !args->gpuPairs) return CUDA_ERROR_INVALID_VALUE;
        mbox_t *mb = open_mailbox(pid, path, sizeof path);
        if (!mb) return unknown_pid(pid);
        char cur[64];
        memcpy(cur, mb->gpu, sizeof cur);
        cur[63] = 0;
        munmap(mb, MB_SIZE);
        for (unsigned i = 0; i < args->gpuPairsCount; i++) {
            char o[64], nw[64];
            uuid_str(&args->gpuPairs[i].oldUuid, o, sizeof o);
            uuid_str(&args->gpuPairs[i].newUuid, nw, sizeof nw);
            int io = gpu_index(o), in = gpu_index(nw);
            if (io < 0 || in < 0 || seen_old[io]++ || seen_new[in]++) return CUDA_ERROR_INVALID_VALUE;
            if (strcmp(o, cur) == 0) snprintf(new_gpu, sizeof new_gpu, "%s", nw);
        }
    }
    return call(pid, "restore", OP_RESTORE, 0, new_gpu, NULL);
}

#ifdef FAKE_CUSTOM_STORAGE
/* CUDA 13.4's CustomStorage completion; this fake has no custom-storage operation to complete */
int cuCheckpointOperationComplete(void *handle) {
    (void)handle;
    return CUDA_ERROR_NOT_SUPPORTED;
}
#endif

int cuCheckpointProcessGetRestoreThreadId(int pid, int *tid) {
    char name[256];
    if (!tid) return CUDA_ERROR_INVALID_VALUE;
    if (mailbox_name(pid, name, sizeof name) != 0) return unknown_pid(pid);
    *tid = pid; /* never blocks, like the real one */
    return CUDA_SUCCESS;
}

/* ---- NVML subset ---- */
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gi, ci; } nvmlProcessInfo_t;

int nvmlInit_v2(void) { return 0; }
int nvmlShutdown(void) { return 0; }

int nvmlSystemGetDriverVersion(char *buf, unsigned int n) {
    const char *e = getenv("FAKE_NVML_DRIVER_VERSION");
    snprintf(buf, n, "%s", e && *e ? e : "580.0.fake");
    return 0;
}

int nvmlDeviceGetCount_v2(unsigned int *n) { *n = (unsigned)ngpus(); return 0; }

int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) {
    if ((int)i >= ngpus()) return 2;
    *h = (void *)(unsigned long)(i + 1);
    return 0;
}

int nvmlDeviceGetUUID(void *h, char *buf, unsigned int n) {
    fake_uuid((int)(unsigned long)h - 1, buf, n);
    return 0;
}

int nvmlDeviceGetName(void *h, char *buf, unsigned int n) {
    (void)h;
    const char *e = getenv("FAKE_NVML_GPU_NAME");
    snprintf(buf, n, "%s", e && *e ? e : "Fake H200");
    return 0;
}

/* processes RUNNING or LOCKED on this GPU, from the mailboxes' mirrors (NVML does not wait on a process; a
 * checkpointed process holds no GPU memory, as measured) */
int nvmlDeviceGetComputeRunningProcesses_v3(void *h, unsigned int *count, nvmlProcessInfo_t *infos) {
    char want[64], path[4096], name[256];
    fake_uuid((int)(unsigned long)h - 1, want, sizeof want);
    DIR *d = opendir("/proc");
    unsigned int found = 0;
    int rc = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            char *end;
            long pid = strtol(e->d_name, &end, 10);
            if (*end || pid <= 0 || pid == getpid() || mailbox_name((int)pid, name, sizeof name) != 0) continue;
            snprintf(path, sizeof path, "%s/%s", dir(), name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            mbox_t mb;
            ssize_t n = pread(fd, &mb, sizeof mb, 0);
            close(fd);
            if (n != (ssize_t)sizeof mb || mb.magic != MB_MAGIC || mb.owner_ns != pidns_of(e->d_name)) continue;
            mb.gpu[63] = 0;
            if (mb.state == ST_CHECKPOINTED || strcmp(mb.gpu, want) != 0) continue;
            if (found < *count) {
                infos[found].pid = (unsigned)pid;
                infos[found].usedGpuMemory = mb.bytes;
                infos[found].gi = infos[found].ci = 0xFFFFFFFF;
            } else {
                rc = 7; /* NVML_ERROR_INSUFFICIENT_SIZE */
            }
            found++;
        }
        closedir(d);
    }
    *count = found;
    return rc;
}
