/*
 * A fake CUDA driver (libcuda + a little NVML) for CPU-only CI.
 *
 * It keeps the checkpoint state machine of the real driver per pid, in one file per pid under $FAKE_CUDA_DIR so
 * that separate processes (gpucr, the workload, the tests) agree, and it reproduces the hazard measured on driver 580:
 * every checkpoint call except GetRestoreThreadId blocks while the target is stopped (/proc/PID/stat state T or t) or
 * its cgroup is frozen (v1 freezer.state, v2 cgroup.events "frozen 1").
 *
 * A workload "holds CUDA state" once it calls fakeCudaRegister(bytes, gpu_index) (it then also maps this library,
 * which is how discovery finds it). fakeCudaWait() blocks while the caller is not RUNNING, as a CUDA call of a locked
 * process would. A process that cannot load the library (a busybox shell in a container) is registered from outside
 * by host pid with fakeCudaRegisterPid(pid, bytes, gpu_index); it must hold an fd on a /dev/nvidia* path so that
 * discovery sees it as the real driver's processes are seen.
 *
 * The real driver keeps its state in the process's memory, so a process CRIU restores under a new host pid (a
 * container in its own pid namespace) is still CHECKPOINTED. The fake finds such a process by a token in its
 * environment (FAKE_CUDA_ID=..., which CRIU restores with the memory): a pid without a record whose token belongs to
 * a record of a process that is gone (or is another task now) takes that record over, CHECKPOINTED.
 *
 * The state dir is "<this library's path>.d" when that directory exists (so every process, a CRIU front started by a
 * runtime whose environment the tests do not control included, agrees whatever its environment), else
 * $FAKE_CUDA_DIR, else /tmp/fake-cuda.
 *
 * Failures are injected per step with a file $FAKE_CUDA_DIR/fail-<step> holding a CUresult (add " once" to fire a
 * single time); steps: lock, checkpoint, restore, unlock, get-state. $FAKE_CUDA_DRIVER_VERSION sets
 * cuDriverGetVersion (default 13000), $FAKE_CUDA_GPUS the number of GPUs (default 2).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <dlfcn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

enum { ST_RUNNING = 0, ST_LOCKED = 1, ST_CHECKPOINTED = 2, ST_FAILED = 3 };
enum {
    CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_NOT_INITIALIZED = 3, CUDA_ERROR_OPERATING_SYSTEM = 304, CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500, CUDA_ERROR_NOT_SUPPORTED = 801, CUDA_ERROR_UNKNOWN = 999
};

typedef struct { unsigned char bytes[16]; } CUuuid;
typedef struct { CUuuid oldUuid; CUuuid newUuid; } CUcheckpointGpuPair;
typedef struct {
    CUcheckpointGpuPair *gpuPairs;
    unsigned int gpuPairsCount;
    char reserved[52 - sizeof(CUcheckpointGpuPair *)];
    unsigned long long reserved1;
} CUcheckpointRestoreArgs;

typedef struct { int state; unsigned long long bytes; char gpu[64]; unsigned long long start; char id[64]; } rec_t;

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

static void path_of(char *buf, size_t n, int pid) { snprintf(buf, n, "%s/%d", dir(), pid); }

static void fake_uuid(int index, char *out, size_t n) {
    snprintf(out, n, "GPU-00000000-0000-4000-8000-%012d", index);
}

static int write_rec(int pid, const rec_t *r);
static unsigned long long proc_start(int pid);

/* The driver's state lives in the process's memory, so a process CRIU brought back from an image is in the state
 * the image was taken in: CHECKPOINTED (gpucr dumps only checkpointed CUDA processes). A restored process is a new
 * task, seen by its start time. Only driver-API callers apply this rule: CRIU may restore the workload into its own
 * time namespace, where its own view of its start time differs from everyone else's. */
static int read_rec_raw(int pid, rec_t *r);
static int adopt(int pid, rec_t *r);
static int read_rec(int pid, rec_t *r) {
    if (read_rec_raw(pid, r) != 0) return adopt(pid, r);
    unsigned long long st = proc_start(pid);
    if (st && r->start && st != r->start) {
        r->state = ST_CHECKPOINTED;
        r->start = st;
        write_rec(pid, r);
    }
    return 0;
}

static int read_rec_raw(int pid, rec_t *r) {
    char p[512];
    path_of(p, sizeof p, pid);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    memset(r, 0, sizeof *r);
    int n = fscanf(f, "state=%d bytes=%llu gpu=%63s start=%llu id=%63s", &r->state, &r->bytes, r->gpu, &r->start,
                   r->id);
    fclose(f);
    if (n == 4 || strcmp(r->id, "-") == 0) r->id[0] = 0;
    return n >= 4 ? 0 : -1;
}

static int write_rec(int pid, const rec_t *r) {
    char p[512], t[600];
    path_of(p, sizeof p, pid);
    snprintf(t, sizeof t, "%s.tmp.%d", p, (int)getpid());
    FILE *f = fopen(t, "w");
    if (!f) return -1;
    fprintf(f, "state=%d bytes=%llu gpu=%s start=%llu id=%s\n", r->state, r->bytes, r->gpu, r->start,
            r->id[0] ? r->id : "-");
    fclose(f);
    if (rename(t, p) != 0) return -1;
    if (r->id[0]) { /* the token's latest owner */
        char ip[600];
        snprintf(ip, sizeof ip, "%s/id-%s", dir(), r->id);
        FILE *g = fopen(ip, "w");
        if (!g) return -1;
        fprintf(g, "%d\n", pid);
        fclose(g);
    }
    return 0;
}

/* FAKE_CUDA_ID from /proc/PID/environ into out (empty when absent) */
static void env_token(int pid, char *out, size_t n) {
    char p[64], buf[65536];
    out[0] = 0;
    snprintf(p, sizeof p, "/proc/%d/environ", pid);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len <= 0) return;
    buf[len] = 0;
    for (char *e = buf; e < buf + len; e += strlen(e) + 1) {
        if (strncmp(e, "FAKE_CUDA_ID=", 13) == 0) {
            snprintf(out, n, "%s", e + 13);
            for (char *c = out; *c; c++) if (*c == '/' || *c == ' ') *c = '_';
            return;
        }
    }
}

/* the stat state letter of pid, or 0 if it is gone */
static char proc_state(int pid) {
    char p[64], buf[1024];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' ? rp[2] : 0;
}

/* field 22 of /proc/PID/stat: when the task was created; a process CRIU restored is a new task */
static unsigned long long proc_start(int pid) {
    char p[64], buf[1024];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *s = strrchr(buf, ')');
    if (!s) return 0;
    s += 2; /* at field 3 */
    for (int i = 3; i < 22 && s; i++) { s = strchr(s, ' '); if (s) s++; }
    return s ? strtoull(s, NULL, 10) : 0;
}

static int file_has(const char *path, const char *needle) {
    char buf[4096];
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    return strstr(buf, needle) != NULL;
}

/* 1 when the pid's v1 freezer cgroup or v2 cgroup is frozen (or freezing) */
static int cgroup_frozen(int pid) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/cgroup", pid);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    char line[4096];
    int frozen = 0;
    const char *v2root = access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0 ? "/sys/fs/cgroup"
                                                                               : "/sys/fs/cgroup/unified";
    while (!frozen && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':');
        if (!c1) continue;
        char *c2 = strchr(c1 + 1, ':');
        if (!c2) continue;
        *c2 = 0;
        const char *ctrl = c1 + 1, *cg = c2 + 1;
        char q[4600];
        if (strcmp(ctrl, "freezer") == 0) {
            snprintf(q, sizeof q, "/sys/fs/cgroup/freezer%s/freezer.state", cg);
            frozen = file_has(q, "FROZEN") || file_has(q, "FREEZING");
        } else if (*ctrl == 0 && strcmp(cg, "/") != 0) {
            snprintf(q, sizeof q, "%s%s/cgroup.events", v2root, cg);
            frozen = file_has(q, "frozen 1");
        }
    }
    fclose(f);
    return frozen;
}

/* The measured hazard: wait (forever, like the real driver) while the target is stopped or frozen. */
static void block_while_frozen(int pid) {
    for (;;) {
        char s = proc_state(pid);
        if (s == 0) return;
        if (s != 'T' && s != 't' && !cgroup_frozen(pid)) return;
        usleep(10000);
    }
}

static int injected(const char *step) {
    char p[512], buf[64] = {0};
    snprintf(p, sizeof p, "%s/fail-%s", dir(), step);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    int rc = atoi(buf);
    if (strstr(buf, "once")) unlink(p);
    return rc;
}

/* serialise read-modify-write of state files among every process using the fake */
static int lock_dir(void) {
    char p[512];
    mkdir(dir(), 0700);
    snprintf(p, sizeof p, "%s/.lock", dir());
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) flock(fd, LOCK_EX);
    return fd;
}

static void unlock_dir(int fd) {
    if (fd >= 0) { flock(fd, LOCK_UN); close(fd); }
}

/* what driver 580 answers for a pid it does not know: a live non-CUDA process, or no process at all */
static int unknown_pid(int pid) { return proc_state(pid) ? CUDA_ERROR_NOT_INITIALIZED : CUDA_ERROR_OPERATING_SYSTEM; }

static int transition(int pid, const char *step, int from, int to) {
    rec_t r;
    if (read_rec(pid, &r) != 0 || proc_state(pid) == 0) return unknown_pid(pid);
    block_while_frozen(pid);
    int rc = injected(step);
    if (rc) return rc;
    int fd = lock_dir();
    if (read_rec(pid, &r) != 0 || proc_state(pid) == 0) rc = unknown_pid(pid);
    else if (r.state != from) rc = CUDA_ERROR_ILLEGAL_STATE;
    else { r.state = to; rc = write_rec(pid, &r) == 0 ? CUDA_SUCCESS : CUDA_ERROR_UNKNOWN; }
    unlock_dir(fd);
    return rc;
}

/* a pid without a record: the restored copy of a process whose record carries its environment's token? */
static int adopt(int pid, rec_t *r) {
    char tok[64], ip[600], buf[32];
    env_token(pid, tok, sizeof tok);
    if (!tok[0]) return -1;
    snprintf(ip, sizeof ip, "%s/id-%s", dir(), tok);
    int fd = open(ip, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    int old = atoi(buf);
    if (old <= 0 || old == pid || read_rec_raw(old, r) != 0 || strcmp(r->id, tok) != 0) return -1;
    char st = proc_state(old); /* a zombie is gone too: CRIU's dump killed it, nobody reaped it yet */
    if (st != 0 && st != 'Z' && st != 'X' && proc_start(old) == r->start) return -1; /* still runs: not a restore */
    r->state = ST_CHECKPOINTED;
    r->start = proc_start(pid);
    return write_rec(pid, r) == 0 ? 0 : -1;
}

/* ---- workload side ---- */
static int register_pid(int pid, unsigned long long bytes, int gpu_index) {
    rec_t r = {ST_RUNNING, bytes, "", 0, ""};
    if (proc_state(pid) == 0) return -1;
    /* the start time as the driver's callers see it: registration runs before any restore, in their namespace */
    r.start = proc_start(pid);
    fake_uuid(gpu_index, r.gpu, sizeof r.gpu);
    env_token(pid, r.id, sizeof r.id);
    int fd = lock_dir();
    int rc = write_rec(pid, &r);
    unlock_dir(fd);
    return rc;
}

int fakeCudaRegister(unsigned long long bytes, int gpu_index) { return register_pid(getpid(), bytes, gpu_index); }

int fakeCudaRegisterPid(int pid, unsigned long long bytes, int gpu_index) { return register_pid(pid, bytes, gpu_index); }

int fakeCudaWait(void) {
    rec_t r;
    for (;;) {
        if (read_rec_raw(getpid(), &r) != 0) return -1;
        if (r.state == ST_RUNNING) return 0;
        usleep(5000);
    }
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
    rec_t r;
    if (read_rec(pid, &r) != 0 || proc_state(pid) == 0) return unknown_pid(pid);
    block_while_frozen(pid);
    int rc = injected("get-state");
    if (rc) return rc;
    if (read_rec(pid, &r) != 0) return unknown_pid(pid);
    *state = r.state;
    return CUDA_SUCCESS;
}

int cuCheckpointProcessLock(int pid, void *args) { (void)args; return transition(pid, "lock", ST_RUNNING, ST_LOCKED); }

int cuCheckpointProcessCheckpoint(int pid, void *args) {
    (void)args;
    return transition(pid, "checkpoint", ST_LOCKED, ST_CHECKPOINTED);
}

int cuCheckpointProcessUnlock(int pid, void *args) {
    (void)args;
    return transition(pid, "unlock", ST_LOCKED, ST_RUNNING);
}

static void uuid_str(const CUuuid *u, char *out, size_t n) {
    const unsigned char *b = u->bytes;
    snprintf(out, n, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

int cuCheckpointProcessRestore(int pid, CUcheckpointRestoreArgs *args) {
    rec_t r;
    if (read_rec(pid, &r) != 0 || proc_state(pid) == 0) return unknown_pid(pid);
    block_while_frozen(pid);
    int rc = injected("restore");
    if (rc) return rc;
    int fd = lock_dir();
    if (read_rec(pid, &r) != 0 || proc_state(pid) == 0) rc = unknown_pid(pid);
    else if (r.state != ST_CHECKPOINTED) rc = CUDA_ERROR_ILLEGAL_STATE;
    else {
        if (args && args->gpuPairsCount) {
            /* like the real driver: the pairs must cover the GPU the process used */
            rc = CUDA_ERROR_INVALID_VALUE;
            for (unsigned i = 0; i < args->gpuPairsCount; i++) {
                char o[64], nw[64];
                uuid_str(&args->gpuPairs[i].oldUuid, o, sizeof o);
                uuid_str(&args->gpuPairs[i].newUuid, nw, sizeof nw);
                if (strcmp(o, r.gpu) == 0) { snprintf(r.gpu, sizeof r.gpu, "%s", nw); rc = CUDA_SUCCESS; break; }
            }
        }
        if (rc == CUDA_SUCCESS) {
            r.state = ST_LOCKED;
            rc = write_rec(pid, &r) == 0 ? CUDA_SUCCESS : CUDA_ERROR_UNKNOWN;
        }
    }
    unlock_dir(fd);
    return rc;
}

int cuCheckpointProcessGetRestoreThreadId(int pid, int *tid) {
    rec_t r;
    if (!tid) return CUDA_ERROR_INVALID_VALUE;
    if (read_rec(pid, &r) != 0) return unknown_pid(pid);
    *tid = pid; /* never blocks, like the real one */
    return CUDA_SUCCESS;
}

/* ---- NVML subset ---- */
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gi, ci; } nvmlProcessInfo_t;

static int ngpus(void) {
    const char *e = getenv("FAKE_CUDA_GPUS");
    return e && *e ? atoi(e) : 2;
}

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

/* processes RUNNING or LOCKED on this GPU (a checkpointed process holds no GPU memory, as measured) */
int nvmlDeviceGetComputeRunningProcesses_v3(void *h, unsigned int *count, nvmlProcessInfo_t *infos) {
    char want[64];
    fake_uuid((int)(unsigned long)h - 1, want, sizeof want);
    DIR *d = opendir(dir());
    unsigned int found = 0;
    int rc = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            char *end;
            long pid = strtol(e->d_name, &end, 10);
            rec_t r;
            if (*end || pid <= 0 || read_rec((int)pid, &r) != 0 || proc_state((int)pid) == 0) continue;
            if (r.state == ST_CHECKPOINTED || strcmp(r.gpu, want) != 0) continue;
            if (found < *count) {
                infos[found].pid = (unsigned)pid;
                infos[found].usedGpuMemory = r.bytes;
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
