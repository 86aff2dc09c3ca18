/* ember-agent: the guest side of `ember run` (protocol: api/run/run_proto.h). Static C, run as
 * PID 1 from an initramfs that holds only this program:
 *   1. mounts devtmpfs and proc; with `ember.root=DEV` on the kernel command line (optionally
 *      `ember.rootfstype=T`, default ext4) mounts DEV and makes it the root (switch_root), so any
 *      root image works without the agent installed in it; then mounts proc, sysfs, devtmpfs,
 *      devpts, tmpfs on /tmp, /run and /dev/shm (whatever the image lacks is created if it can be)
 *      and brings up `lo`; with `ember.net=ADDR/PREFIX,GATEWAY[,DNS]` also eth0 (network_up);
 *   2. connects to CID 2 port ERP_VSOCK_PORT (or `ember.port=N`), sends READY, reads the EXEC
 *      spec (reconnecting if the stream is reset first, as after a snapshot restore);
 *   3. forks the command in a session of its own (pipes for stdin/stdout/stderr, or a pty), and
 *      relays with poll(): stdin by credit, output only while its send buffer has room (so a
 *      slow host blocks the command instead of growing a buffer); reaps every zombie;
 *   4. after the command ends and its output is drained: sync(), EXIT, waits up to 5 s for the
 *      host to close, and reboots: reboot(RB_AUTOBOOT) is an i8042 reset with `reboot=k` (what
 *      Ember, like Firecracker, takes as the guest's exit; a power-off would only halt the vCPUs
 *      without ACPI).
 * For tests on the host, `ember-agent --fd N` (not PID 1) speaks the protocol on the connected
 * stream N and skips the mounts and the reboot; it exits 0 after EXIT, 1 on a protocol error.
 * Diagnostics go to stderr (the console when PID 1), never to the command's streams.
 */
#define _GNU_SOURCE
#include "run_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define STDIN_WINDOW (256u * 1024)
/* Output frames waiting for the socket. Pipes are read only while a whole chunk fits below
 * OUT_CAP - OUT_RESERVE; the reserve keeps room for CREDIT frames. */
#define OUT_CAP (512u * 1024)
#define OUT_RESERVE 256u
#define CHUNK (32u * 1024)

static int pid1;

static void logmsg(const char *fmt, ...) {
    char line[512];
    va_list ap;
    int n = snprintf(line, sizeof line, "ember-agent: ");
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    strncat(line, "\n", sizeof line - strlen(line) - 1);
    if (write(2, line, strlen(line)) < 0) { /* nowhere else to report it */
    }
}

static void finish_vm(int code) {
    if (!pid1) exit(code);
    sync();
    reboot(RB_AUTOBOOT);
    for (;;) pause(); /* PID 1 must not exit: that would panic the kernel */
}

static void fatal(const char *fmt, ...) {
    char line[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    logmsg("%s", line);
    finish_vm(1);
}

/* ---- setup as PID 1 ---- */

static void mount_one(const char *src, const char *dir, const char *type, unsigned long flags, const char *data) {
    mkdir(dir, 0755);
    if (mount(src, dir, type, flags, data) != 0 && errno != EBUSY)
        logmsg("mount %s on %s: %s", type, dir, strerror(errno));
}

/* The value of `key=` on the kernel command line, or NULL. */
static char *cmdline_value(const char *cmdline, const char *key, char *out, size_t cap) {
    size_t klen = strlen(key);
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ' || *p == '\n') ++p;
        if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
            size_t n = 0;
            p += klen + 1;
            while (p[n] && p[n] != ' ' && p[n] != '\n' && n + 1 < cap) {
                out[n] = p[n];
                ++n;
            }
            out[n] = 0;
            return out;
        }
        while (*p && *p != ' ') ++p;
    }
    return NULL;
}

static void read_cmdline(char *buf, size_t cap) {
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, cap - 1);
    buf[n > 0 ? (size_t)n : 0] = 0;
    if (fd >= 0) close(fd);
}

static void switch_root(const char *dev, const char *fstype) {
    mkdir("/newroot", 0755);
    if (mount(dev, "/newroot", fstype, 0, NULL) != 0 && mount(dev, "/newroot", fstype, MS_RDONLY, NULL) != 0)
        fatal("cannot mount root %s (%s): %s", dev, fstype, strerror(errno));
    mkdir("/newroot/dev", 0755);
    mkdir("/newroot/proc", 0755);
    int dev_moved = mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL) == 0;
    int proc_moved = mount("/proc", "/newroot/proc", NULL, MS_MOVE, NULL) == 0;
    if (!dev_moved) umount2("/dev", MNT_DETACH);
    if (!proc_moved) umount2("/proc", MNT_DETACH);
    if (chdir("/newroot") != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 || chdir("/") != 0)
        fatal("cannot switch to root %s: %s", dev, strerror(errno));
    if (!dev_moved) mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    if (!proc_moved) mount_one("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

/* Sets IFF_UP on `ifname` through the AF_INET socket `s`; 0 or -1 (errno). */
static int link_up(int s, const char *ifname) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, ifname);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) return -1;
    ifr.ifr_flags = (short)(ifr.ifr_flags | IFF_UP);
    return ioctl(s, SIOCSIFFLAGS, &ifr);
}

static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    link_up(s, "lo");
    close(s);
}

static int set_in_addr(int s, unsigned long req, const char *ifname, const char *text) {
    struct ifreq ifr;
    struct sockaddr_in sin;
    memset(&ifr, 0, sizeof ifr);
    memset(&sin, 0, sizeof sin);
    strcpy(ifr.ifr_name, ifname);
    sin.sin_family = AF_INET;
    if (inet_pton(AF_INET, text, &sin.sin_addr) != 1) return -1;
    memcpy(&ifr.ifr_addr, &sin, sizeof sin);
    return ioctl(s, req, &ifr);
}

/* /etc/resolv.conf naming `dns`, without writing the image where it has one: a file in /run bind-
 * mounted over it; where it is a symbolic link (systemd-resolved's, into /run), the file is made
 * where the link points. */
static void resolv_conf(const char *dns) {
    char text[96], link[256], target[300];
    int n = snprintf(text, sizeof text, "nameserver %s\n", dns);
    struct stat st;
    const char *path = "/run/ember-resolv.conf";
    ssize_t l;
    if (stat("/etc/resolv.conf", &st) != 0 && (l = readlink("/etc/resolv.conf", link, sizeof link - 1)) > 0) {
        link[l] = 0;
        snprintf(target, sizeof target, "%s%s", link[0] == '/' ? "" : "/etc/", link);
        for (char *p = target + 1; (p = strchr(p, '/')) != NULL; ++p) {
            *p = 0;
            mkdir(target, 0755);
            *p = '/';
        }
        path = target;
    } else if (stat("/etc/resolv.conf", &st) != 0) {
        path = "/etc/resolv.conf"; /* the image has none: this run's layer gets one */
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, text, (size_t)n) != n) logmsg("resolv.conf (%s): %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    if (strcmp(path, "/run/ember-resolv.conf") == 0 && mount(path, "/etc/resolv.conf", NULL, MS_BIND, NULL) != 0)
        logmsg("bind-mount resolv.conf: %s", strerror(errno));
}

/* `ember.net=ADDR/PREFIX,GATEWAY[,DNS]` (ember run --net through passt): eth0 up with the IPv4
 * address, a default route through GATEWAY and, with DNS, a resolv.conf naming it. */
static void network_up(char *spec) {
    char *addr = spec, *gw = strchr(spec, ','), *dns = NULL, *slash = strchr(spec, '/');
    if (!gw || !slash || slash > gw) {
        logmsg("ember.net=%s: expected ADDR/PREFIX,GATEWAY[,DNS]", spec);
        return;
    }
    *gw++ = 0;
    *slash = 0;
    if ((dns = strchr(gw, ',')) != NULL) *dns++ = 0;
    unsigned prefix = (unsigned)strtoul(slash + 1, NULL, 10);
    if (prefix > 32) prefix = 32;
    char mask[16];
    uint32_t m = prefix ? 0xffffffffu << (32 - prefix) : 0;
    snprintf(mask, sizeof mask, "%u.%u.%u.%u", m >> 24, (m >> 16) & 255, (m >> 8) & 255, m & 255);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    if (set_in_addr(s, SIOCSIFADDR, "eth0", addr) != 0 || set_in_addr(s, SIOCSIFNETMASK, "eth0", mask) != 0) {
        logmsg("eth0: cannot set %s/%u: %s", addr, prefix, strerror(errno));
        close(s);
        return;
    }
    if (link_up(s, "eth0") != 0) logmsg("eth0: up: %s", strerror(errno));
    struct rtentry rt;
    struct sockaddr_in any, via;
    memset(&rt, 0, sizeof rt);
    memset(&any, 0, sizeof any);
    memset(&via, 0, sizeof via);
    any.sin_family = via.sin_family = AF_INET;
    if (inet_pton(AF_INET, gw, &via.sin_addr) == 1) {
        memcpy(&rt.rt_dst, &any, sizeof any);
        memcpy(&rt.rt_genmask, &any, sizeof any);
        memcpy(&rt.rt_gateway, &via, sizeof via);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = (char *)"eth0";
        if (ioctl(s, SIOCADDRT, &rt) != 0) logmsg("default route via %s: %s", gw, strerror(errno));
    }
    close(s);
    if (dns && *dns) resolv_conf(dns);
}

static unsigned setup_pid1(void) {
    char cmdline[4096], dev[256], fstype[64], port[16], net[128];
    unsigned vport = ERP_VSOCK_PORT;
    mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    /* Without /dev/console in the initramfs the kernel starts init with no fds 0-2; fill them
     * (in order: open returns the lowest free fd), so later pipes never land on them. */
    for (int fd = 0; fd < 3; ++fd)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/console", O_RDWR) < 0) open("/dev/null", O_RDWR);
    mount_one("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    read_cmdline(cmdline, sizeof cmdline);
    if (cmdline_value(cmdline, "ember.port", port, sizeof port)) vport = (unsigned)strtoul(port, NULL, 10);
    if (cmdline_value(cmdline, "ember.root", dev, sizeof dev)) {
        if (!cmdline_value(cmdline, "ember.rootfstype", fstype, sizeof fstype)) strcpy(fstype, "ext4");
        switch_root(dev, fstype);
    }
    mount_one("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_one("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666");
    mount_one("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount_one("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount_one("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    loopback_up();
    if (cmdline_value(cmdline, "ember.net", net, sizeof net)) network_up(net);
    sethostname("ember", 5);
    return vport;
}

/* ---- stream helpers ---- */

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            poll(&pfd, 1, -1);
            continue;
        }
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int connect_host(unsigned port) {
    for (int attempt = 0; attempt < 500; ++attempt) {
        struct sockaddr_vm a;
        int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0) fatal("vsock socket: %s", strerror(errno));
        memset(&a, 0, sizeof a);
        a.svm_family = AF_VSOCK;
        a.svm_cid = VMADDR_CID_HOST;
        a.svm_port = port;
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) return s;
        close(s);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fatal("cannot connect to the host on vsock port %u", port);
    return -1;
}

/* Input bytes from the host, decoded frame by frame. */
static uint8_t inbuf[ERP_MAX_FRAME];
static size_t inlen;

/* Reads the exec spec into *spec (malloc'd). Returns 0, or -1 if the stream ended or was reset
 * before the first byte of it (the caller reconnects); any other failure is fatal. */
static int read_exec(int sock, uint8_t **spec, size_t *spec_len) {
    uint8_t *buf = NULL;
    size_t len = 0;
    inlen = 0;
    for (;;) {
        struct erp_frame f;
        size_t used;
        int rc = erp_decode(inbuf, inlen, ERP_TO_GUEST, &f, &used);
        if (rc < 0) fatal("protocol error before the command started: %s", erp_error_name(rc));
        if (rc == ERP_OK) {
            if (f.type != ERP_T_EXEC) fatal("protocol error: frame type %u before the exec request", f.type);
            if (len + f.length > ERP_MAX_EXEC) fatal("protocol error: exec request above %u bytes", ERP_MAX_EXEC);
            uint8_t *grown = realloc(buf, len + f.length);
            if (!grown) fatal("out of memory for the exec request");
            buf = grown;
            memcpy(buf + len, f.payload, f.length);
            len += f.length;
            memmove(inbuf, inbuf + used, inlen - used);
            inlen -= used;
            if (!(f.flags & ERP_F_MORE)) {
                *spec = buf;
                *spec_len = len;
                return 0;
            }
            continue;
        }
        ssize_t n = read(sock, inbuf + inlen, sizeof inbuf - inlen);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (len == 0 && inlen == 0) {
                free(buf);
                return -1;
            }
            fatal("the host closed the stream inside the exec request");
        }
        inlen += (size_t)n;
    }
}

/* ---- the command ---- */

struct child_io {
    pid_t pid;
    int in, out, err; /* our ends; -1 once closed */
    int pty;          /* the pty master (tty runs), also `in` and `out` */
};

enum { STAGE_CHDIR = 1, STAGE_EXEC = 2, STAGE_TTY = 3 };

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* Forks the command. Returns 0, or the errno that kept it from starting with *why set to one
 * line. */
static int start_command(const struct erp_exec *e, char **argv, char **envp, struct child_io *io, char *why,
                         size_t why_cap) {
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1}, status_pipe[2];
    int tty = (e->flags & ERP_EXEC_TTY) != 0;
    char slave_name[64] = "";
    io->pty = -1;
    if (tty) {
        io->pty = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (io->pty < 0 || grantpt(io->pty) != 0 || unlockpt(io->pty) != 0 ||
            ptsname_r(io->pty, slave_name, sizeof slave_name) != 0) {
            int err = errno;
            snprintf(why, why_cap, "cannot allocate a pty: %s", strerror(err));
            return err;
        }
        struct winsize ws = {.ws_row = e->rows, .ws_col = e->cols};
        ioctl(io->pty, TIOCSWINSZ, &ws);
    } else if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) {
        int err = errno;
        snprintf(why, why_cap, "pipe: %s", strerror(err));
        return err;
    }
    if (pipe2(status_pipe, O_CLOEXEC) != 0) {
        int err = errno;
        snprintf(why, why_cap, "pipe: %s", strerror(err));
        return err;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        snprintf(why, why_cap, "fork: %s", strerror(err));
        return err;
    }
    if (pid == 0) {
        int report[2];
        sigset_t none;
        sigemptyset(&none);
        for (int s = 1; s < NSIG; ++s) signal(s, SIG_DFL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setsid();
        report[0] = STAGE_TTY;
        if (tty) {
            int slave = open(slave_name, O_RDWR);
            if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) != 0 || dup2(slave, 0) < 0 || dup2(slave, 1) < 0 ||
                dup2(slave, 2) < 0)
                goto failed;
            if (slave > 2) close(slave);
        } else if (dup2(pin[0], 0) < 0 || dup2(pout[1], 1) < 0 || dup2(perr[1], 2) < 0) {
            goto failed;
        }
        report[0] = STAGE_CHDIR;
        if (chdir(e->cwd[0] ? e->cwd : "/") != 0) goto failed;
        clearenv();
        setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
        setenv("HOME", "/root", 1);
        if (tty) setenv("TERM", "xterm", 1);
        for (uint32_t i = 0; i < e->envc; ++i) putenv(envp[i]);
        report[0] = STAGE_EXEC;
        execvp(argv[0], argv);
    failed:
        report[1] = errno;
        if (write(status_pipe[1], report, sizeof report) < 0) _exit(127);
        _exit(127);
    }
    close(status_pipe[1]);
    if (!tty) {
        close(pin[0]);
        close(pout[1]);
        close(perr[1]);
    }
    int report[2];
    ssize_t n;
    do n = read(status_pipe[0], report, sizeof report);
    while (n < 0 && errno == EINTR);
    close(status_pipe[0]);
    if (n == (ssize_t)sizeof report) {
        const char *what = report[0] == STAGE_CHDIR ? "cannot change to directory" : report[0] == STAGE_TTY
                                                                                        ? "cannot set up the tty for"
                                                                                        : "cannot run";
        const char *obj = report[0] == STAGE_CHDIR ? (e->cwd[0] ? e->cwd : "/") : argv[0];
        snprintf(why, why_cap, "%s '%s': %s", what, obj, strerror(report[1]));
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        return report[1] > 0 ? report[1] : EINVAL;
    }
    io->pid = pid;
    if (tty) {
        io->in = dup(io->pty);
        io->out = io->pty;
        io->err = -1;
    } else {
        io->in = pin[1];
        io->out = pout[0];
        io->err = perr[0];
    }
    set_nonblock(io->in);
    set_nonblock(io->out);
    if (io->err >= 0) set_nonblock(io->err);
    return 0;
}

/* ---- relay ---- */

static uint8_t outbuf[OUT_CAP];
static size_t outoff, outlen; /* unsent bytes are outbuf[outoff..outlen) */
static uint8_t stdinbuf[STDIN_WINDOW];
static size_t stdin_off, stdin_len; /* pending stdin is stdinbuf[stdin_off..stdin_len) */

static void out_compact(void) {
    if (outoff == outlen) {
        outoff = outlen = 0;
    } else if (outoff > OUT_CAP / 2) {
        memmove(outbuf, outbuf + outoff, outlen - outoff);
        outlen -= outoff;
        outoff = 0;
    }
}

static void close_fd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

struct run_state {
    int sock;
    struct child_io io;
    int tty;
    int sfd;
    int child_done;
    int status;
    int stdin_eof;     /* EOF frame received */
    uint32_t credit;     /* stdin bytes taken (or dropped) and not yet returned by CREDIT */
    uint32_t unreturned; /* stdin bytes received and not yet returned by CREDIT (<= window) */
    int host_gone;
};

static void protocol_error(struct run_state *r, const char *what) {
    if (!r->child_done) kill(-r->io.pid, SIGKILL);
    fatal("protocol error: %s", what);
}

static void handle_frame(struct run_state *r, const struct erp_frame *f) {
    switch (f->type) {
    case ERP_T_DATA:
        if (r->stdin_eof) protocol_error(r, "stdin data after EOF");
        if (f->length > STDIN_WINDOW - r->unreturned) protocol_error(r, "stdin beyond the credit window");
        r->unreturned += f->length;
        if (r->io.in < 0) { /* the command closed its stdin: drop, but return the credit */
            r->credit += f->length;
            break;
        }
        if (stdin_off > 0 && stdin_len + f->length > STDIN_WINDOW) {
            memmove(stdinbuf, stdinbuf + stdin_off, stdin_len - stdin_off);
            stdin_len -= stdin_off;
            stdin_off = 0;
        }
        memcpy(stdinbuf + stdin_len, f->payload, f->length);
        stdin_len += f->length;
        break;
    case ERP_T_EOF:
        if (r->stdin_eof) protocol_error(r, "second stdin EOF");
        r->stdin_eof = 1;
        break;
    case ERP_T_SIGNAL:
        if (!r->child_done) {
            /* With a tty, the terminal's foreground group (a job-control shell may have moved
             * it); otherwise the command's own group (it is a session leader). */
            pid_t group = r->tty ? tcgetpgrp(r->io.pty) : -1;
            kill(-(group > 0 ? group : r->io.pid), (int)erp_get_u32(f->payload));
        }
        break;
    case ERP_T_WINSIZE:
        if (r->tty) {
            struct winsize ws = {.ws_row = erp_get_u16(f->payload), .ws_col = erp_get_u16(f->payload + 2)};
            ioctl(r->io.pty, TIOCSWINSZ, &ws);
        }
        break;
    default: protocol_error(r, "exec request while the command runs");
    }
}

static void process_input(struct run_state *r);

static void read_socket(struct run_state *r) {
    ssize_t n = read(r->sock, inbuf + inlen, sizeof inbuf - inlen);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        r->host_gone = 1;
        return;
    }
    inlen += (size_t)n;
    process_input(r);
}

/* Handles every whole frame in inbuf. */
static void process_input(struct run_state *r) {
    size_t pos = 0;
    for (;;) {
        struct erp_frame f;
        size_t used;
        int rc = erp_decode(inbuf + pos, inlen - pos, ERP_TO_GUEST, &f, &used);
        if (rc < 0) protocol_error(r, erp_error_name(rc));
        if (rc != ERP_OK) break;
        handle_frame(r, &f);
        pos += used;
    }
    memmove(inbuf, inbuf + pos, inlen - pos);
    inlen -= pos;
}

static void write_stdin(struct run_state *r) {
    ssize_t n = write(r->io.in, stdinbuf + stdin_off, stdin_len - stdin_off);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0) { /* EPIPE and the like: the command no longer reads stdin */
        r->credit += (uint32_t)(stdin_len - stdin_off);
        stdin_off = stdin_len = 0;
        close_fd(&r->io.in);
        return;
    }
    r->credit += (uint32_t)n;
    stdin_off += (size_t)n;
    if (stdin_off == stdin_len) stdin_off = stdin_len = 0;
}

/* Reads one chunk of `fd` into an output DATA frame; at its end (EOF, or EIO: a pty whose every
 * slave is closed) stops reading it, and closes it unless it is the pty master. The master stays
 * open until the command is reaped: the slave closes while the command is still in exit(), and
 * closing the master then hangs the slave up, which SIGHUPs the exiting command (seen as "killed
 * by SIGHUP" in about 1 run in 50). */
static void read_output(int *fd, uint8_t channel, int pty) {
    size_t room = OUT_CAP - OUT_RESERVE - outlen - ERP_HEADER_SIZE;
    if (room > CHUNK) room = CHUNK;
    ssize_t n = read(*fd, outbuf + outlen + ERP_HEADER_SIZE, room);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        if (*fd == pty) *fd = -1;
        else close_fd(fd);
        return;
    }
    erp_encode_header(outbuf + outlen, ERP_T_DATA, channel, 0, (uint32_t)n);
    outlen += ERP_HEADER_SIZE + (size_t)n;
}

static void reap(struct run_state *r) {
    struct signalfd_siginfo si;
    while (read(r->sfd, &si, sizeof si) > 0) {
    }
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p <= 0) break;
        if (p == r->io.pid) {
            r->child_done = 1;
            r->status = st;
        }
    }
}

static void relay(struct run_state *r) {
    int drained_idle = 0;
    set_nonblock(r->sock);
    process_input(r); /* frames that came with the last EXEC chunk */
    while (!r->host_gone) {
        if (r->child_done && r->io.out < 0 && r->io.err < 0) break;
        if (r->child_done && drained_idle) break; /* grandchildren hold the pipes: stop reading */
        int can_read_out = OUT_CAP - OUT_RESERVE - outlen >= ERP_HEADER_SIZE + CHUNK;
        if (r->credit > 0 && (r->credit >= STDIN_WINDOW / 4 || stdin_len == stdin_off) &&
            OUT_CAP - outlen >= ERP_HEADER_SIZE + 4) {
            outlen += erp_encode_credit(outbuf + outlen, r->credit);
            r->unreturned -= r->credit;
            r->credit = 0;
        }
        if (r->stdin_eof && stdin_len == stdin_off && r->io.in >= 0) {
            /* A pty has no EOF of its own: the line discipline's VEOF (^D) is the equivalent. */
            if (r->tty && write(r->io.in, "\x04", 1) < 0) {
            }
            close_fd(&r->io.in);
        }
        if (r->child_done) close_fd(&r->io.in);
        struct pollfd p[5];
        int np = 0, i_sock = -1, i_out = -1, i_err = -1, i_in = -1, i_sig;
        p[np] = (struct pollfd){.fd = r->sock, .events = (short)(POLLIN | (outlen > outoff ? POLLOUT : 0))};
        i_sock = np++;
        if (r->io.out >= 0 && can_read_out) {
            p[np] = (struct pollfd){.fd = r->io.out, .events = POLLIN};
            i_out = np++;
        }
        if (r->io.err >= 0 && can_read_out) {
            p[np] = (struct pollfd){.fd = r->io.err, .events = POLLIN};
            i_err = np++;
        }
        if (r->io.in >= 0 && stdin_len > stdin_off) {
            p[np] = (struct pollfd){.fd = r->io.in, .events = POLLOUT};
            i_in = np++;
        }
        p[np] = (struct pollfd){.fd = r->sfd, .events = POLLIN};
        i_sig = np++;
        int rc = poll(p, (nfds_t)np, r->child_done ? 100 : -1);
        if (rc < 0 && errno == EINTR) continue;
        if (rc == 0) {
            if (can_read_out) drained_idle = 1;
            continue;
        }
        if (p[i_sig].revents) reap(r);
        if (p[i_sock].revents & (POLLIN | POLLHUP | POLLERR)) read_socket(r);
        if (p[i_sock].revents & POLLOUT) {
            ssize_t n = write(r->sock, outbuf + outoff, outlen - outoff);
            if (n > 0) outoff += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR) r->host_gone = 1;
            out_compact();
        }
        if (i_in >= 0 && p[i_in].revents) write_stdin(r);
        if (i_out >= 0 && p[i_out].revents) read_output(&r->io.out, ERP_CH_STDOUT, r->io.pty);
        if (i_err >= 0 && p[i_err].revents && OUT_CAP - OUT_RESERVE - outlen >= ERP_HEADER_SIZE + CHUNK)
            read_output(&r->io.err, ERP_CH_STDERR, r->io.pty);
    }
}

/* ---- main ---- */

int main(int argc, char **argv) {
    unsigned port = ERP_VSOCK_PORT;
    int given_fd = -1;
    pid1 = getpid() == 1;
    if (pid1) {
        port = setup_pid1();
    } else if (argc == 3 && strcmp(argv[1], "--fd") == 0) {
        given_fd = atoi(argv[2]);
    } else {
        fprintf(stderr, "usage: ember-agent (as PID 1) | ember-agent --fd N\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);

    struct run_state r;
    memset(&r, 0, sizeof r);
    r.sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (r.sfd < 0) fatal("signalfd: %s", strerror(errno));

    uint8_t *spec = NULL;
    size_t spec_len = 0;
    for (;;) {
        uint8_t ready[16];
        r.sock = given_fd >= 0 ? given_fd : connect_host(port);
        if (write_all(r.sock, ready, erp_encode_ready(ready, STDIN_WINDOW)) == 0 &&
            read_exec(r.sock, &spec, &spec_len) == 0)
            break;
        if (given_fd >= 0) fatal("the host closed the stream before the exec request");
        close(r.sock); /* reset (e.g. a snapshot restore): connect again */
    }
    struct erp_exec e;
    int rc = erp_exec_parse(spec, spec_len, &e);
    if (rc != ERP_OK) fatal("bad exec request: %s", erp_error_name(rc));
    char **cargv = calloc((size_t)e.argc + 1, sizeof *cargv);
    char **cenv = calloc((size_t)e.envc + 1, sizeof *cenv);
    if (!cargv || !cenv) fatal("out of memory for the exec request");
    const char *s = e.strings;
    for (uint32_t i = 0; i < e.argc; ++i, s = erp_next_string(s)) cargv[i] = (char *)s;
    for (uint32_t i = 0; i < e.envc; ++i, s = erp_next_string(s)) cenv[i] = (char *)s;
    r.tty = (e.flags & ERP_EXEC_TTY) != 0;

    uint8_t exitf[ERP_HEADER_SIZE + 8 + ERP_MAX_EXIT_TEXT];
    size_t exitn;
    char why[ERP_MAX_EXIT_TEXT];
    int start_err = start_command(&e, cargv, cenv, &r.io, why, sizeof why);
    if (start_err != 0) {
        exitn = erp_encode_exit(exitf, ERP_EXIT_START, (uint32_t)start_err, why, strlen(why));
    } else {
        relay(&r);
        if (r.host_gone) {
            if (!r.child_done) kill(-r.io.pid, SIGKILL);
            logmsg("the host closed the stream; command killed");
            finish_vm(1);
        }
        int flags = fcntl(r.sock, F_GETFL);
        fcntl(r.sock, F_SETFL, flags & ~O_NONBLOCK);
        if (write_all(r.sock, outbuf + outoff, outlen - outoff) != 0) finish_vm(1);
        if (WIFSIGNALED(r.status))
            exitn = erp_encode_exit(exitf, ERP_EXIT_SIGNAL, (uint32_t)WTERMSIG(r.status), NULL, 0);
        else
            exitn = erp_encode_exit(exitf, ERP_EXIT_CODE, (uint32_t)WEXITSTATUS(r.status), NULL, 0);
    }
    sync();
    if (write_all(r.sock, exitf, exitn) != 0) finish_vm(1);
    shutdown(r.sock, SHUT_WR);
    /* Wait (5 s at most) for the host to close: it has EXIT once it does. */
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        struct pollfd p = {.fd = r.sock, .events = POLLIN};
        uint8_t sink[4096];
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left = 5000 - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
        if (left <= 0 || poll(&p, 1, (int)left) <= 0 || read(r.sock, sink, sizeof sink) <= 0) break;
    }
    finish_vm(0);
    return 0;
}
