/* blkbench: the guest side of scripts/bench's block I/O figures, and the maker of their disk.
 *
 *   blkbench fill FILE MIB
 *       Writes a MIB MiB image in which every 4 KiB block holds the same pseudo-random bytes
 *       except its first 8, which tag it with its own block number. Runs on the host (or L1).
 *   blkbench run DEV [--region-mib N] [--seq-mib N] [--bs-kib N] [--rand-secs S] [--qd N ...]
 *       Benchmarks the raw block device DEV with O_DIRECT and prints KEY=VALUE lines:
 *         BLK_SEQREAD_MIBPS     N MiB read sequentially in --bs-kib requests from offset 0
 *         BLK_SEQWRITE_MIBPS    N MiB written sequentially from offset --region-mib (the same
 *                               tagged blocks that are there already, so the disk's contents never
 *                               change), then fdatasync (a FLUSH when the device has a write cache)
 *         BLK_RANDREAD_QD<n>_IOPS  4 KiB reads at uniformly random 4 KiB-aligned offsets in the
 *                               first --region-mib MiB for --rand-secs seconds, from n threads
 *                               each with one read in flight (queue depth n); one line per --qd
 *         BLK_ERRORS            blocks whose tag did not match their position (must be 0)
 *       Offsets come from fixed seeds, so every VMM sees the same request sequence. Defaults:
 *       region 64 MiB, seq 64 MiB, bs 1024 KiB, rand 3 s, qd 1. The device must hold at least
 *       2 * region. Exits 1 (after BLK_FAIL=reason) on any I/O error.
 *
 * Built static (gcc -static -O2 -pthread) by scripts/bench; the guest has only busybox.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096u
#define MIB (1024u * 1024u)
#define TAG_KEY 0x454d424552424c4bULL /* "EMBERBLK" */
#define MAX_QD 64

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint64_t tag(uint64_t block) { return block ^ TAG_KEY; }

/* The bytes every block shares after its tag. */
static void fill_template(unsigned char *blk) {
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (unsigned i = 0; i < BLOCK; i += 8) {
        uint64_t v = xorshift(&s);
        memcpy(blk + i, &v, 8);
    }
}

/* Fills len bytes (a multiple of BLOCK) with the blocks that belong at byte offset off. */
static void stamp(unsigned char *buf, size_t len, uint64_t off, const unsigned char *tmpl) {
    for (size_t i = 0; i < len; i += BLOCK) {
        memcpy(buf + i, tmpl, BLOCK);
        uint64_t t = tag((off + i) / BLOCK);
        memcpy(buf + i, &t, 8);
    }
}

/* Number of blocks in buf (read from offset off) whose tag is wrong. */
static uint64_t check(const unsigned char *buf, size_t len, uint64_t off) {
    uint64_t bad = 0;
    for (size_t i = 0; i < len; i += BLOCK) {
        uint64_t t;
        memcpy(&t, buf + i, 8);
        bad += t != tag((off + i) / BLOCK);
    }
    return bad;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail(const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; ++p)
        if (*p == ' ' || *p == '\n') *p = '_';
    printf("BLK_FAIL=%s\n", msg);
    fflush(stdout);
    exit(1);
}

static void *aligned(size_t len) {
    void *p = NULL;
    if (posix_memalign(&p, BLOCK, len) != 0) fail("posix_memalign %zu", len);
    memset(p, 0, len); /* touch every page before anything is timed */
    return p;
}

/* Full-length pread/pwrite; O_DIRECT on a block device does not return short counts unless
 * something is wrong, so a short count is an error too. */
static void io(int write, int fd, void *buf, size_t len, uint64_t off) {
    ssize_t n = write ? pwrite(fd, buf, len, (off_t)off) : pread(fd, buf, len, (off_t)off);
    const char *what = write ? "pwrite" : "pread";
    if (n < 0) fail("%s at %llu: %s", what, (unsigned long long)off, strerror(errno));
    if ((size_t)n != len) fail("short %s at %llu: %zd of %zu", what, (unsigned long long)off, n, len);
}

static int cmd_fill(const char *path, unsigned mib) {
    unsigned char *tmpl = aligned(BLOCK), *buf = aligned(MIB);
    fill_template(tmpl);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) { perror(path); return 1; }
    for (uint64_t off = 0; off < (uint64_t)mib * MIB; off += MIB) {
        stamp(buf, MIB, off, tmpl);
        if (pwrite(fd, buf, MIB, (off_t)off) != (ssize_t)MIB) { perror(path); return 1; }
    }
    if (close(fd) != 0) { perror(path); return 1; }
    return 0;
}

struct rand_shared {
    int fd;
    uint64_t blocks;
    atomic_int stop;
};

struct rand_thread {
    struct rand_shared *sh;
    pthread_t tid;
    uint64_t seed, ops, bad;
};

static void *rand_worker(void *arg) {
    struct rand_thread *t = arg;
    unsigned char *buf = aligned(BLOCK);
    uint64_t s = t->seed;
    while (!atomic_load_explicit(&t->sh->stop, memory_order_relaxed)) {
        uint64_t off = (xorshift(&s) % t->sh->blocks) * BLOCK;
        io(0, t->sh->fd, buf, BLOCK, off);
        t->bad += check(buf, BLOCK, off);
        t->ops++;
    }
    free(buf);
    return NULL;
}

/* IOPS of qd threads, each with one 4 KiB read in flight, over secs seconds. */
static double rand_read(int fd, uint64_t region, double secs, unsigned qd, uint64_t *bad) {
    struct rand_shared sh = {fd, region / BLOCK, 0};
    struct rand_thread th[MAX_QD];
    double t0 = now();
    for (unsigned i = 0; i < qd; ++i) {
        th[i] = (struct rand_thread){&sh, 0, 0x2545f4914f6cdd1dULL * (i + 1), 0, 0};
        if (pthread_create(&th[i].tid, NULL, rand_worker, &th[i]) != 0) fail("pthread_create");
    }
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
    atomic_store(&sh.stop, 1);
    uint64_t ops = 0;
    for (unsigned i = 0; i < qd; ++i) {
        pthread_join(th[i].tid, NULL);
        ops += th[i].ops;
        *bad += th[i].bad;
    }
    return (double)ops / (now() - t0);
}

static unsigned arg_uint(const char *name, const char *v, unsigned lo, unsigned hi) {
    char *end;
    unsigned long n = strtoul(v ? v : "", &end, 10);
    if (!v || !*v || *end || n < lo || n > hi) {
        fprintf(stderr, "blkbench: %s wants a number in [%u, %u]\n", name, lo, hi);
        exit(2);
    }
    return (unsigned)n;
}

static int cmd_run(int argc, char **argv) {
    const char *dev = argv[0];
    unsigned region_mib = 64, seq_mib = 64, bs_kib = 1024, rand_secs = 3, nqd = 0, qds[8];
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--region-mib")) region_mib = arg_uint(k, v, 1, 1u << 20);
        else if (!strcmp(k, "--seq-mib")) seq_mib = arg_uint(k, v, 1, 1u << 20);
        else if (!strcmp(k, "--bs-kib")) bs_kib = arg_uint(k, v, 4, 64 * 1024);
        else if (!strcmp(k, "--rand-secs")) rand_secs = arg_uint(k, v, 1, 3600);
        else if (!strcmp(k, "--qd") && nqd < 8) qds[nqd++] = arg_uint(k, v, 1, MAX_QD);
        else { fprintf(stderr, "blkbench: unknown or repeated option %s\n", k); return 2; }
    }
    if (nqd == 0) qds[nqd++] = 1;
    if (bs_kib % 4) { fprintf(stderr, "blkbench: --bs-kib must be a multiple of 4\n"); return 2; }
    const uint64_t region = (uint64_t)region_mib * MIB, seq = (uint64_t)seq_mib * MIB;
    const size_t bs = (size_t)bs_kib * 1024;
    if (seq > region || seq % bs)
        fail("--seq-mib must be a multiple of --bs-kib and at most --region-mib");

    /* The kernel creates the node while probing the disk, normally before init runs. */
    int fd = -1;
    for (int tries = 0; tries < 100 && fd < 0; ++tries) {
        fd = open(dev, O_RDWR | O_DIRECT | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) usleep(50 * 1000);
        else if (fd < 0) break;
    }
    if (fd < 0) fail("open %s: %s", dev, strerror(errno));
    uint64_t size = 0;
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) size = (uint64_t)st.st_size; /* for testing */
    else if (ioctl(fd, BLKGETSIZE64, &size) != 0) fail("BLKGETSIZE64 %s: %s", dev, strerror(errno));
    if (size < 2 * region)
        fail("%s has %llu bytes, needs %llu", dev, (unsigned long long)size, (unsigned long long)(2 * region));
    printf("BLK_DISK_MIB=%llu\n", (unsigned long long)(size / MIB));

    unsigned char *tmpl = aligned(BLOCK), *buf = aligned(bs);
    fill_template(tmpl);
    uint64_t bad = 0;

    io(0, fd, buf, bs, 0); /* warm-up, untimed */
    double t = now();
    for (uint64_t off = 0; off < seq; off += bs) {
        io(0, fd, buf, bs, off);
        bad += check(buf, bs, off);
    }
    t = now() - t;
    printf("BLK_SEQREAD_MIBPS=%.1f\n", (double)seq / MIB / t);
    fflush(stdout);

    t = now();
    for (uint64_t off = region; off < region + seq; off += bs) {
        stamp(buf, bs, off, tmpl);
        io(1, fd, buf, bs, off);
    }
    if (fdatasync(fd) != 0) fail("fdatasync: %s", strerror(errno));
    t = now() - t;
    printf("BLK_SEQWRITE_MIBPS=%.1f\n", (double)seq / MIB / t);
    fflush(stdout);

    for (unsigned i = 0; i < nqd; ++i) {
        double iops = rand_read(fd, region, rand_secs, qds[i], &bad);
        printf("BLK_RANDREAD_QD%u_IOPS=%.0f\n", qds[i], iops);
        fflush(stdout);
    }
    printf("BLK_ERRORS=%llu\n", (unsigned long long)bad);
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && !strcmp(argv[1], "fill"))
        return cmd_fill(argv[2], arg_uint("MIB", argv[3], 1, 1u << 20));
    if (argc >= 3 && !strcmp(argv[1], "run")) return cmd_run(argc - 2, argv + 2);
    fprintf(stderr, "usage: blkbench fill FILE MIB\n"
                    "       blkbench run DEV [--region-mib N] [--seq-mib N] [--bs-kib N] "
                    "[--rand-secs S] [--qd N]...\n");
    return 2;
}
