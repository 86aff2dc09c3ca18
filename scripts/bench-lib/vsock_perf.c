/* Guest side of scripts/bench's vsock figures (static, appended to the initrd as /bin/vsockperf).
 *
 *   vsockperf PORT   listens on vsock PORT (any CID), prints VSOCK_READY=1 on stdout, then
 *                    serves one connection at a time until a 'q' request; exits 0 after it.
 *
 * Each connection carries one request, its first byte naming it (MIB: little-endian u32 after it):
 *   'p'        ping: answers one byte 'p' (the host times connect + this round trip)
 *   's' MIB    sink: reads MIB MiB, then answers one byte 'k' (host -> guest throughput)
 *   'o' MIB    source: writes MIB MiB, then reads until the host closes (guest -> host)
 *   'q'        answers 'q' and ends the program
 * Any short read or failed write prints VSOCK_FAIL=<what> and exits 1, so the run fails.
 */
#include <errno.h>
#include <linux/vm_sockets.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (256u * 1024u)

static unsigned char buf[CHUNK];

static void die(const char *what) {
    printf("VSOCK_FAIL=%s:%s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

static void read_full(int c, void *p, size_t n, const char *what) {
    unsigned char *b = p;
    while (n > 0) {
        ssize_t r = read(c, b, n);
        if (r == 0) errno = EPIPE;
        if (r <= 0) die(what);
        b += r;
        n -= (size_t)r;
    }
}

static void write_full(int c, const void *p, size_t n, const char *what) {
    const unsigned char *b = p;
    while (n > 0) {
        ssize_t w = write(c, b, n);
        if (w <= 0) die(what);
        b += w;
        n -= (size_t)w;
    }
}

static uint64_t read_mib(int c) {
    unsigned char le[4];
    read_full(c, le, sizeof le, "count");
    uint32_t mib = (uint32_t)le[0] | (uint32_t)le[1] << 8 | (uint32_t)le[2] << 16 |
                   (uint32_t)le[3] << 24;
    return (uint64_t)mib << 20;
}

/* Serves one connection; returns 0 when it asked the program to end. */
static int serve(int c) {
    unsigned char op;
    read_full(c, &op, 1, "op");
    switch (op) {
    case 'p':
        write_full(c, "p", 1, "ping");
        break;
    case 's': {
        uint64_t left = read_mib(c);
        while (left > 0) {
            size_t want = left < CHUNK ? (size_t)left : CHUNK;
            ssize_t r = read(c, buf, want);
            if (r == 0) errno = EPIPE;
            if (r <= 0) die("sink");
            left -= (uint64_t)r;
        }
        write_full(c, "k", 1, "sink-ack");
        break;
    }
    case 'o': {
        uint64_t left = read_mib(c);
        while (left > 0) {
            size_t n = left < CHUNK ? (size_t)left : CHUNK;
            write_full(c, buf, n, "source");
            left -= n;
        }
        while (read(c, buf, CHUNK) > 0) {
        }
        break;
    }
    case 'q':
        write_full(c, "q", 1, "quit");
        return 0;
    default:
        errno = EINVAL;
        die("unknown-op");
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: vsockperf PORT\n");
        return 2;
    }
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                            .svm_port = (unsigned)strtoul(argv[1], NULL, 10)};
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) die("socket");
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
    if (listen(s, 8) != 0) die("listen");
    memset(buf, 0x5a, sizeof buf);
    printf("VSOCK_READY=1\n");
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) die("accept");
        int more = serve(c);
        close(c);
        if (!more) return 0;
    }
}
