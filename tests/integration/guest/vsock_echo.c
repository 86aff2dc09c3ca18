/* Guest side of tests/integration/vsock_test.sh (static, stored in the rootfs as /vsock_echo).
 *   vsock_echo listen PORT          echo server: one child per connection, echoes until EOF
 *   vsock_echo connect PORT BYTES   connects to CID 2 PORT, sends BYTES of a pattern while
 *                                   reading the echo back, prints G2H=ok when every byte matches
 *   vsock_echo refused PORT         connects to CID 2 PORT, prints REFUSED=<errno name>
 *   vsock_echo serve PORT CMD       server: each connection runs `sh -c CMD` with the connection
 *                                   as stdin and stdout (e.g. md5sum: the digest of what the host
 *                                   sent goes back to it)
 *   vsock_echo drain PORT           server: each connection is read until it ends; prints
 *                                   DRAIN_END=<bytes>:<eof|errno name>
 *   vsock_echo gen BYTES            writes BYTES of the pattern to stdout (for `| md5sum`)
 *   vsock_echo send PORT BYTES KEY  connects to CID 2 PORT, writes BYTES of the pattern, shuts
 *                                   down its sending side and reads the host's answer to EOF;
 *                                   prints KEY=<answer>, or KEY=error:<errno name> if the
 *                                   connection failed, and KEY_MS=<milliseconds>
 */
#include <errno.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned char pat(unsigned long i) { return (unsigned char)((i * 2654435761u) >> 13); }

static int vsock_socket(void) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) { perror("socket"); exit(1); }
    return s;
}

static int connect_host(unsigned port) {
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = 2, .svm_port = port};
    int s = vsock_socket();
    return connect(s, (struct sockaddr *)&a, sizeof a) == 0 ? s : -1;
}

static void echo(int c) {
    static char buf[65536];
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n <= 0) break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(c, buf + off, (size_t)(n - off));
            if (w <= 0) _exit(1);
            off += w;
        }
    }
    close(c);
}

static const char *err_name(int e) {
    switch (e) {
    case ECONNRESET: return "ECONNRESET";
    case EPIPE: return "EPIPE";
    case ENOTCONN: return "ENOTCONN";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ETIMEDOUT: return "ETIMEDOUT";
    default: return strerror(e);
    }
}

static int listen_any(unsigned port) {
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    int s = vsock_socket();
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 128)) { perror("bind/listen"); exit(1); }
    return s;
}

static void fill(unsigned char *b, unsigned long off, size_t n) {
    for (size_t i = 0; i < n; ++i) b[i] = pat(off + i);
}

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    if (!strcmp(argv[1], "gen")) {
        static unsigned char b[65536];
        unsigned long total = strtoul(argv[2], NULL, 10);
        for (unsigned long off = 0; off < total;) {
            size_t n = total - off < sizeof b ? total - off : sizeof b;
            fill(b, off, n);
            if (fwrite(b, 1, n, stdout) != n) return 1;
            off += n;
        }
        return fflush(stdout) != 0;
    }
    unsigned port = (unsigned)strtoul(argv[2], NULL, 10);
    if (!strcmp(argv[1], "listen")) {
        signal(SIGCHLD, SIG_IGN);
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
        int s = vsock_socket();
        if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) { perror("bind/listen"); return 1; }
        printf("LISTENING=%u\n", port);
        fflush(stdout);
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0) continue;
            if (fork() == 0) { close(s); echo(c); _exit(0); }
            close(c);
        }
    }
    if (!strcmp(argv[1], "serve") && argc == 4) {
        signal(SIGCHLD, SIG_IGN);
        int s = listen_any(port);
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0) continue;
            if (fork() == 0) {
                close(s);
                dup2(c, 0);
                dup2(c, 1);
                close(c);
                execl("/bin/sh", "sh", "-c", argv[3], (char *)NULL);
                _exit(127);
            }
            close(c);
        }
    }
    if (!strcmp(argv[1], "drain")) {
        signal(SIGCHLD, SIG_IGN);
        int s = listen_any(port);
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0) continue;
            if (fork() == 0) {
                static char buf[65536];
                unsigned long total = 0;
                ssize_t n;
                while ((n = read(c, buf, sizeof buf)) > 0) total += (unsigned long)n;
                printf("DRAIN_END=%lu:%s\n", total, n == 0 ? "eof" : err_name(errno));
                fflush(stdout);
                _exit(0);
            }
            close(c);
        }
    }
    if (!strcmp(argv[1], "send") && argc == 5) {
        static unsigned char b[65536];
        unsigned long total = strtoul(argv[3], NULL, 10);
        const char *key = argv[4];
        long t0 = now_ms();
        int s = connect_host(port);
        if (s < 0) { printf("%s=error:connect:%s\n", key, err_name(errno)); return 1; }
        signal(SIGPIPE, SIG_IGN);
        for (unsigned long off = 0; off < total;) {
            size_t n = total - off < sizeof b ? total - off : sizeof b;
            fill(b, off, n);
            ssize_t w = write(s, b, n);
            if (w <= 0) { printf("%s=error:%s\n%s_SENT=%lu\n", key, err_name(errno), key, off); return 0; }
            off += (unsigned long)w;
        }
        shutdown(s, SHUT_WR);
        char answer[256];
        size_t got = 0;
        ssize_t r;
        while (got < sizeof answer - 1 && (r = read(s, answer + got, sizeof answer - 1 - got)) > 0) got += (size_t)r;
        answer[got] = 0;
        answer[strcspn(answer, " \n")] = 0;
        printf("%s=%s\n%s_MS=%ld\n", key, answer, key, now_ms() - t0);
        return 0;
    }
    if (!strcmp(argv[1], "refused")) {
        int s = connect_host(port);
        printf("REFUSED=%s\n", s >= 0 ? "connected" : errno == ECONNRESET ? "ECONNRESET" : errno == ECONNREFUSED ? "ECONNREFUSED" : strerror(errno));
        return 0;
    }
    if (!strcmp(argv[1], "connect") && argc == 4) {
        unsigned long total = strtoul(argv[3], NULL, 10), sent = 0, got = 0;
        int s = connect_host(port);
        if (s < 0) { printf("G2H=connect:%s\n", strerror(errno)); return 1; }
        static unsigned char out[16384], in[65536];
        int bad = 0;
        while (got < total) {
            struct pollfd p = {.fd = s, .events = POLLIN | (sent < total ? POLLOUT : 0)};
            if (poll(&p, 1, 60000) <= 0) { printf("G2H=stall:%lu/%lu\n", got, total); return 1; }
            if ((p.revents & POLLOUT) && sent < total) {
                size_t n = total - sent < sizeof out ? total - sent : sizeof out;
                for (size_t i = 0; i < n; ++i) out[i] = pat(sent + i);
                ssize_t w = send(s, out, n, MSG_DONTWAIT);
                if (w > 0) sent += (unsigned long)w;
                if (sent == total) shutdown(s, SHUT_WR);
            }
            if (p.revents & (POLLIN | POLLHUP)) {
                ssize_t r = recv(s, in, sizeof in, MSG_DONTWAIT);
                if (r == 0) break;
                for (ssize_t i = 0; i < r; ++i) bad |= in[i] != pat(got + (unsigned long)i);
                if (r > 0) got += (unsigned long)r;
            }
        }
        printf("G2H=%s\n", !bad && got == total ? "ok" : "mismatch");
        return 0;
    }
    return 2;
}
