/* An LD_PRELOAD shim for gpucr CLI tests: logs every fsync and rename of the process it is loaded into, with whether
 * a watched pid is alive at that moment, and can stop the process for good at its first fsync inside a checkpoint's
 * temporary dir (so a test can SIGKILL gpucr exactly while CRIU waits on its post-dump answer).
 *
 * Configured once, at load, from FSYNC_GATE_LOG (file to append lines to), FSYNC_GATE_WATCH (pid) and
 * FSYNC_GATE_BLOCK (file created when blocking); these and LD_PRELOAD are then removed from the environment, so the
 * processes gpucr starts (criu) run without the shim.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char log_path[4096], block_path[4096];
static int watch;

__attribute__((constructor)) static void gate_init(void) {
    const char *e;
    if ((e = getenv("FSYNC_GATE_LOG"))) snprintf(log_path, sizeof log_path, "%s", e);
    if ((e = getenv("FSYNC_GATE_BLOCK"))) snprintf(block_path, sizeof block_path, "%s", e);
    if ((e = getenv("FSYNC_GATE_WATCH"))) watch = atoi(e);
    unsetenv("LD_PRELOAD");
    unsetenv("FSYNC_GATE_LOG");
    unsetenv("FSYNC_GATE_BLOCK");
    unsetenv("FSYNC_GATE_WATCH");
}

static int alive(void) {
    char p[64], buf[512];
    if (!watch) return -1;
    snprintf(p, sizeof p, "/proc/%d/stat", watch);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *r = strrchr(buf, ')');
    return r && r[1] == ' ' && r[2] != 'Z' && r[2] != 'X';
}

static void note(const char *what, const char *a, const char *b) {
    if (!log_path[0]) return;
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    dprintf(fd, "%s %s %s alive=%d\n", what, a, b ? b : "-", alive());
    close(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    char p[64], path[4096] = "?";
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(p, path, sizeof path - 1);
    if (n > 0) path[n] = 0;
    note("fsync", path, NULL);
    if (block_path[0] && strstr(path, ".gpucr-tmp-")) {
        int b = open(block_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (b >= 0) close(b);
        for (;;) pause();
    }
    return real(fd);
}

int rename(const char *a, const char *b) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    int rc = real(a, b);
    if (rc == 0) note("rename", a, b);
    return rc;
}
