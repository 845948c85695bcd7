/*
 * A container workload for the fake CUDA driver (fake_cuda.c, linked in statically: the test image is a busybox
 * rootfs without a libc). It registers as a CUDA process (so it maps $FAKE_CUDA_DEVICE and runs the fake's driver
 * thread), maps $FAKE_CUDA_LIB read-only as a CUDA process maps libcuda (what gpucr's discovery looks for), then
 * counts: each tick is one unit of GPU work (fakeCudaBegin/End), so the counter stops while the process is LOCKED
 * or CHECKPOINTED. It appends the counter to LOG (opened per tick: no fd held, like `echo $i >> LOG`).
 *
 * usage: fake_cuda_app LOG [TICK_MS] [GPU_BYTES]
 *
 * $FAKE_CUDA_HOST_MIB (optional) makes it hold that many MiB of random host memory, standing in for the GPU data the
 * real driver moves into the process at checkpoint (so a dump carries bytes, for measurements of what comes after
 * CRIU; tests leave it unset).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

int fakeCudaRegister(unsigned long long bytes, int gpu_index);
void fakeCudaBegin(void);
void fakeCudaEnd(void);

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s LOG [TICK_MS] [GPU_BYTES]\n", argv[0]);
        return 2;
    }
    long tick_ms = argc > 2 ? atol(argv[2]) : 200;
    unsigned long long bytes = argc > 3 ? strtoull(argv[3], NULL, 10) : 1ULL << 30;
    const char *lib = getenv("FAKE_CUDA_LIB");
    int lfd = lib && *lib ? open(lib, O_RDONLY | O_CLOEXEC) : -1;
    if (lfd < 0 || mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, lfd, 0) == MAP_FAILED) {
        perror("fake_cuda_app: map $FAKE_CUDA_LIB");
        return 1;
    }
    close(lfd);
    const char *host = getenv("FAKE_CUDA_HOST_MIB");
    size_t host_bytes = host && *host ? (size_t)atol(host) << 20 : 0;
    if (host_bytes) {
        unsigned char *p = mmap(NULL, host_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            perror("fake_cuda_app: $FAKE_CUDA_HOST_MIB");
            return 1;
        }
        for (size_t off = 0; off < host_bytes;) {
            ssize_t n = getrandom(p + off, host_bytes - off > (1 << 20) ? (1 << 20) : host_bytes - off, 0);
            if (n <= 0) {
                perror("fake_cuda_app: getrandom");
                return 1;
            }
            off += (size_t)n;
        }
    }
    if (fakeCudaRegister(bytes, 0) != 0) {
        perror("fake_cuda_app: fakeCudaRegister ($FAKE_CUDA_DEVICE, $FAKE_CUDA_DIR)");
        return 1;
    }
    for (unsigned long i = 1;; i++) {
        fakeCudaBegin();
        int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            char buf[32];
            int n = snprintf(buf, sizeof buf, "%lu\n", i);
            if (write(fd, buf, (size_t)n) != n) perror("fake_cuda_app: write");
            close(fd);
        }
        fakeCudaEnd();
        struct timespec ts = {tick_ms / 1000, (tick_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}
