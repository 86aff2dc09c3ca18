/* The `ember run` agent protocol: one framed byte stream between Ember (host) and the guest
 * agent (guest-kernels/agent/ember_agent.c). Pure code, no allocation, no I/O: this one header is
 * compiled as C11 by the static agent and as C++20 by Ember, its unit tests and its fuzz target,
 * so both ends share one definition of every byte.
 *
 * TRANSPORT. One virtio-vsock stream per run, opened by the GUEST: the agent connects to CID 2
 * (VMADDR_CID_HOST) port ERP_VSOCK_PORT (kernel command line `ember.port=N` overrides), which
 * Ember's vsock device turns into a connection to the Unix socket `<uds_path>_<port>` that Ember
 * listens on before the VM starts (Firecracker's docs/vsock.md, "guest-initiated"). Chosen over
 * the host-initiated `CONNECT <port>\n` scheme because
 *   - the connection itself marks the agent as up: Ember never polls a port that may not be
 *     listening yet (a host CONNECT to a port without listener is answered by a reset, so the
 *     host would have to retry in a loop during boot);
 *   - after a snapshot restore (the warm start) every vsock connection is reset (Firecracker
 *     sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET); the agent, snapshotted while waiting for its
 *     exec request, sees the reset and simply connects again, to the restored VM's listener.
 *
 * FRAMES. Every frame is an 8-byte header then `length` payload bytes:
 *     byte 0     type      (ERP_T_*)
 *     byte 1     channel   (ERP_CH_*; 0 = control, for every type but DATA, EOF and CREDIT)
 *     byte 2     flags     (ERP_F_MORE on EXEC only; every other bit must be 0)
 *     byte 3     reserved  (must be 0)
 *     bytes 4-7  length    (little endian, 0..ERP_MAX_PAYLOAD, exact per type below)
 * Integers in payloads are little endian.
 *
 *   type     dir  channel  length   payload
 *   READY    g>h  0        8        u32 protocol version (ERP_VERSION), u32 stdin window (bytes,
 *                                   1..ERP_MAX_STDIN_WINDOW): the agent is up and waits for EXEC
 *   EXEC     h>g  0        1..MAX   a chunk of the exec spec (below); ERP_F_MORE on every chunk
 *                                   but the last; the agent starts the command after the last
 *   DATA     h>g  STDIN    1..MAX   bytes for the command's stdin
 *   DATA     g>h  STDOUT,  1..MAX   bytes the command wrote (STDOUT only when it has a tty)
 *                 STDERR
 *   EOF      h>g  STDIN    0        no more stdin: the agent closes the command's stdin once the
 *                                   data before it is written
 *   CREDIT   g>h  STDIN    4        u32 n >= 1: n more stdin bytes were taken by the command
 *   SIGNAL   h>g  0        4        u32 signal number (1..64) for the command's process group
 *   WINSIZE  h>g  0        4        u16 rows, u16 columns (tty runs; ignored otherwise)
 *   EXIT     g>h  0        8..8+ERP_MAX_EXIT_TEXT
 *                                   u32 kind, u32 value, then text (no NUL):
 *                                   ERP_EXIT_CODE   value = exit code 0..255
 *                                   ERP_EXIT_SIGNAL value = signal 1..64 that killed it
 *                                   ERP_EXIT_START  value = errno: the command could not be
 *                                                   started; text says why (e.g. execve)
 * Anything else (unknown type, a type in the wrong direction, wrong channel, non-zero flags or
 * reserved byte, a length outside the type's bounds, an out-of-range value) is a protocol error:
 * the receiver closes the stream. erp_decode() refuses a bad header as soon as its 8 bytes are
 * there, before any payload is buffered, so a hostile guest can make Ember hold at most one
 * header plus ERP_MAX_PAYLOAD bytes. EXIT text is guest-controlled: Ember prints it only after
 * replacing bytes outside printable ASCII.
 *
 * EXEC SPEC (the concatenated EXEC payloads, at most ERP_MAX_EXEC bytes):
 *     u32 flags (ERP_EXEC_TTY; other bits 0), u16 rows, u16 columns, u32 argc (1..ERP_MAX_ARGC),
 *     u32 envc (0..ERP_MAX_ENVC), then argc + envc + 1 NUL-terminated strings: cwd (empty: "/"),
 *     argv[0..argc-1] (argv[0] not empty; looked up in PATH), env[0..envc-1] ("NAME=value", NAME
 *     not empty). Nothing may follow the last NUL. The command's environment is the agent's
 *     defaults (PATH, HOME, TERM for tty runs) overridden and extended by env.
 *
 * SEQUENCE. agent connects -> READY -> EXEC chunks -> (DATA/EOF/SIGNAL/WINSIZE from the host,
 * DATA/CREDIT from the agent, in any order) -> EXIT, sent after the command ended, its output
 * pipes were drained and sync() returned, so the disks are consistent once Ember has EXIT and
 * Ember may stop the VM at once. The agent then waits (5 s at most) for the host to close the
 * stream and reboots (reboot(RB_AUTOBOOT), an i8042 reset with `reboot=k`, Ember's cue to exit).
 * The host keeps the stream open until it has EXIT: a close before that aborts the run (the agent
 * kills the command's process group and reboots). With a tty, stdin EOF is delivered as the
 * terminal's VEOF (^D), and SIGNAL goes to the terminal's foreground process group.
 *
 * BACK-PRESSURE. Guest to host: by not reading. Ember reads the next frame only after it has
 * written the previous DATA to its stdout/stderr; vsock's own credit then stalls the agent, which
 * stops reading the command's pipes, which blocks the command: no byte is dropped and nothing
 * grows. Host to guest: by credit, so control frames (SIGNAL, WINSIZE) are never stuck behind
 * stdin the command does not read. The host may have at most the READY window of stdin bytes
 * sent and not yet returned by CREDIT; the agent buffers at most that much and treats more as a
 * protocol error. It returns credit as the command takes the bytes (or as it drops them once the
 * command closed its stdin), batched: when a quarter of the window is due or its buffer is empty.
 * EXEC is sent before any stdin and is bounded by ERP_MAX_EXEC.
 */
#ifndef EMBER_GUEST_PROTO_RUN_PROTO_H
#define EMBER_GUEST_PROTO_RUN_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
#define ERP_CAST(T, v) static_cast<T>(v)
#define ERP_NULL nullptr
#else
#define ERP_CAST(T, v) ((T)(v))
#define ERP_NULL NULL
#endif

#define ERP_VSOCK_PORT 10789u
#define ERP_VERSION 1u
#define ERP_HEADER_SIZE 8u
#define ERP_MAX_PAYLOAD 65536u
#define ERP_MAX_FRAME (ERP_HEADER_SIZE + ERP_MAX_PAYLOAD)
#define ERP_MAX_STDIN_WINDOW (4u << 20)
#define ERP_MAX_EXIT_TEXT 512u
#define ERP_MAX_EXEC (4u << 20)
#define ERP_MAX_ARGC 65536u
#define ERP_MAX_ENVC 65536u
#define ERP_EXEC_FIXED 16u
#define ERP_MAX_SIGNAL 64u

enum {
    ERP_T_READY = 1,
    ERP_T_EXEC = 2,
    ERP_T_DATA = 3,
    ERP_T_EOF = 4,
    ERP_T_CREDIT = 5,
    ERP_T_SIGNAL = 6,
    ERP_T_WINSIZE = 7,
    ERP_T_EXIT = 8
};
enum { ERP_CH_CONTROL = 0, ERP_CH_STDIN = 1, ERP_CH_STDOUT = 2, ERP_CH_STDERR = 3 };
enum { ERP_F_MORE = 1 };
enum { ERP_EXEC_TTY = 1 };
enum { ERP_EXIT_CODE = 0, ERP_EXIT_SIGNAL = 1, ERP_EXIT_START = 2 };
/* Direction of the stream being decoded. */
enum { ERP_TO_HOST = 0, ERP_TO_GUEST = 1 };

/* erp_decode results: >0 needs more bytes, 0 a frame, <0 a protocol error. */
enum {
    ERP_NEED_MORE = 1,
    ERP_OK = 0,
    ERP_E_TYPE = -1,      /* unknown type, or one not sent in this direction */
    ERP_E_CHANNEL = -2,   /* channel not allowed for the type */
    ERP_E_FLAGS = -3,     /* flags or reserved byte not allowed */
    ERP_E_LENGTH = -4,    /* length outside the type's bounds */
    ERP_E_VALUE = -5      /* payload value out of range */
};

struct erp_frame {
    uint8_t type;
    uint8_t channel;
    uint8_t flags;
    uint32_t length;
    const uint8_t *payload; /* points into the decoded buffer; `length` bytes */
};

static inline uint32_t erp_get_u32(const uint8_t *p) {
    return ERP_CAST(uint32_t, p[0]) | ERP_CAST(uint32_t, p[1]) << 8 | ERP_CAST(uint32_t, p[2]) << 16 |
           ERP_CAST(uint32_t, p[3]) << 24;
}
static inline uint16_t erp_get_u16(const uint8_t *p) {
    return ERP_CAST(uint16_t, ERP_CAST(unsigned, p[0]) | ERP_CAST(unsigned, p[1]) << 8);
}
static inline void erp_put_u32(uint8_t *p, uint32_t v) {
    p[0] = ERP_CAST(uint8_t, v);
    p[1] = ERP_CAST(uint8_t, v >> 8);
    p[2] = ERP_CAST(uint8_t, v >> 16);
    p[3] = ERP_CAST(uint8_t, v >> 24);
}
static inline void erp_put_u16(uint8_t *p, uint16_t v) {
    p[0] = ERP_CAST(uint8_t, v);
    p[1] = ERP_CAST(uint8_t, v >> 8);
}

static inline const char *erp_error_name(int status) {
    switch (status) {
    case ERP_NEED_MORE: return "incomplete frame";
    case ERP_OK: return "ok";
    case ERP_E_TYPE: return "unknown frame type for this direction";
    case ERP_E_CHANNEL: return "channel not allowed for the frame type";
    case ERP_E_FLAGS: return "flags or reserved byte not allowed";
    case ERP_E_LENGTH: return "length outside the frame type's bounds";
    case ERP_E_VALUE: return "payload value out of range";
    default: return "unknown status";
    }
}

/* Header checks that need no payload: type for the direction, channel, flags, length bounds. */
static inline int erp_check_header(uint8_t type, uint8_t channel, uint8_t flags, uint8_t reserved,
                                   uint32_t length, int direction) {
    const int to_host = direction == ERP_TO_HOST;
    uint32_t min_len = 0, max_len = 0;
    int channel_ok = channel == ERP_CH_CONTROL;
    int flags_ok = flags == 0;
    switch (type) {
    case ERP_T_READY:
        if (!to_host) return ERP_E_TYPE;
        min_len = max_len = 8;
        break;
    case ERP_T_EXEC:
        if (to_host) return ERP_E_TYPE;
        min_len = 1;
        max_len = ERP_MAX_PAYLOAD;
        flags_ok = (flags & ~ERP_CAST(unsigned, ERP_F_MORE)) == 0;
        break;
    case ERP_T_DATA:
        channel_ok = to_host ? (channel == ERP_CH_STDOUT || channel == ERP_CH_STDERR) : channel == ERP_CH_STDIN;
        min_len = 1;
        max_len = ERP_MAX_PAYLOAD;
        break;
    case ERP_T_EOF:
        if (to_host) return ERP_E_TYPE;
        channel_ok = channel == ERP_CH_STDIN;
        break;
    case ERP_T_CREDIT:
        if (!to_host) return ERP_E_TYPE;
        channel_ok = channel == ERP_CH_STDIN;
        min_len = max_len = 4;
        break;
    case ERP_T_SIGNAL:
    case ERP_T_WINSIZE:
        if (to_host) return ERP_E_TYPE;
        min_len = max_len = 4;
        break;
    case ERP_T_EXIT:
        if (!to_host) return ERP_E_TYPE;
        min_len = 8;
        max_len = 8 + ERP_MAX_EXIT_TEXT;
        break;
    default: return ERP_E_TYPE;
    }
    if (!channel_ok) return ERP_E_CHANNEL;
    if (!flags_ok || reserved != 0) return ERP_E_FLAGS;
    if (length < min_len || length > max_len) return ERP_E_LENGTH;
    return ERP_OK;
}

/* Payload checks of a complete frame whose header passed erp_check_header. */
static inline int erp_check_payload(const struct erp_frame *f) {
    const uint8_t *p = f->payload;
    uint32_t a, b, i;
    switch (f->type) {
    case ERP_T_READY:
        a = erp_get_u32(p);
        b = erp_get_u32(p + 4);
        if (a != ERP_VERSION || b == 0 || b > ERP_MAX_STDIN_WINDOW) return ERP_E_VALUE;
        return ERP_OK;
    case ERP_T_CREDIT:
        a = erp_get_u32(p);
        return a == 0 || a > ERP_MAX_STDIN_WINDOW ? ERP_E_VALUE : ERP_OK;
    case ERP_T_SIGNAL:
        a = erp_get_u32(p);
        return a == 0 || a > ERP_MAX_SIGNAL ? ERP_E_VALUE : ERP_OK;
    case ERP_T_EXIT:
        a = erp_get_u32(p);
        b = erp_get_u32(p + 4);
        if (a == ERP_EXIT_CODE) {
            if (b > 255) return ERP_E_VALUE;
        } else if (a == ERP_EXIT_SIGNAL) {
            if (b == 0 || b > ERP_MAX_SIGNAL) return ERP_E_VALUE;
        } else if (a != ERP_EXIT_START) {
            return ERP_E_VALUE;
        }
        for (i = 8; i < f->length; ++i)
            if (p[i] == 0) return ERP_E_VALUE;
        return ERP_OK;
    default: return ERP_OK;
    }
}

/* Decodes the frame at the start of buf[0..len). Returns ERP_OK with *out filled (its payload
 * points into buf) and *consumed set to the frame's size; ERP_NEED_MORE (nothing set) when buf
 * holds a valid prefix of a frame, i.e. fewer than 8 bytes or a valid header whose payload is not
 * all there yet; or a negative ERP_E_* for a frame that can never be valid, as soon as the bytes
 * that show it are there. Never reads outside buf, never allocates. */
static inline int erp_decode(const uint8_t *buf, size_t len, int direction, struct erp_frame *out, size_t *consumed) {
    struct erp_frame f;
    int rc;
    if (len < ERP_HEADER_SIZE) return ERP_NEED_MORE;
    f.type = buf[0];
    f.channel = buf[1];
    f.flags = buf[2];
    f.length = erp_get_u32(buf + 4);
    rc = erp_check_header(f.type, f.channel, f.flags, buf[3], f.length, direction);
    if (rc != ERP_OK) return rc;
    if (len - ERP_HEADER_SIZE < f.length) return ERP_NEED_MORE;
    f.payload = buf + ERP_HEADER_SIZE;
    rc = erp_check_payload(&f);
    if (rc != ERP_OK) return rc;
    *out = f;
    *consumed = ERP_HEADER_SIZE + f.length;
    return ERP_OK;
}

/* Writes a frame header; returns ERP_HEADER_SIZE, or 0 (nothing written) if the header would not
 * pass erp_check_header in either direction. */
static inline size_t erp_encode_header(uint8_t *out, uint8_t type, uint8_t channel, uint8_t flags, uint32_t length) {
    if (erp_check_header(type, channel, flags, 0, length, ERP_TO_HOST) != ERP_OK &&
        erp_check_header(type, channel, flags, 0, length, ERP_TO_GUEST) != ERP_OK)
        return 0;
    out[0] = type;
    out[1] = channel;
    out[2] = flags;
    out[3] = 0;
    erp_put_u32(out + 4, length);
    return ERP_HEADER_SIZE;
}

/* Fixed-size frames (out must hold 16 bytes): each returns the frame's size. */
static inline size_t erp_encode_u32_frame(uint8_t *out, uint8_t type, uint8_t channel, uint32_t v) {
    if (erp_encode_header(out, type, channel, 0, 4) == 0) return 0;
    erp_put_u32(out + ERP_HEADER_SIZE, v);
    return ERP_HEADER_SIZE + 4;
}
static inline size_t erp_encode_ready(uint8_t *out, uint32_t stdin_window) {
    erp_encode_header(out, ERP_T_READY, ERP_CH_CONTROL, 0, 8);
    erp_put_u32(out + ERP_HEADER_SIZE, ERP_VERSION);
    erp_put_u32(out + ERP_HEADER_SIZE + 4, stdin_window);
    return ERP_HEADER_SIZE + 8;
}
static inline size_t erp_encode_credit(uint8_t *out, uint32_t n) {
    return erp_encode_u32_frame(out, ERP_T_CREDIT, ERP_CH_STDIN, n);
}
static inline size_t erp_encode_signal(uint8_t *out, uint32_t signo) {
    return erp_encode_u32_frame(out, ERP_T_SIGNAL, ERP_CH_CONTROL, signo);
}
static inline size_t erp_encode_winsize(uint8_t *out, uint16_t rows, uint16_t cols) {
    erp_encode_header(out, ERP_T_WINSIZE, ERP_CH_CONTROL, 0, 4);
    erp_put_u16(out + ERP_HEADER_SIZE, rows);
    erp_put_u16(out + ERP_HEADER_SIZE + 2, cols);
    return ERP_HEADER_SIZE + 4;
}
static inline size_t erp_encode_eof(uint8_t *out) {
    return erp_encode_header(out, ERP_T_EOF, ERP_CH_STDIN, 0, 0);
}
/* EXIT: out must hold ERP_HEADER_SIZE + 8 + ERP_MAX_EXIT_TEXT bytes. The text is cut at
 * ERP_MAX_EXIT_TEXT bytes and at its first NUL. */
static inline size_t erp_encode_exit(uint8_t *out, uint32_t kind, uint32_t value, const char *text, size_t text_len) {
    size_t n = 0;
    while (n < text_len && n < ERP_MAX_EXIT_TEXT && text[n] != 0) ++n;
    erp_encode_header(out, ERP_T_EXIT, ERP_CH_CONTROL, 0, ERP_CAST(uint32_t, 8 + n));
    erp_put_u32(out + ERP_HEADER_SIZE, kind);
    erp_put_u32(out + ERP_HEADER_SIZE + 4, value);
    if (n != 0) memcpy(out + ERP_HEADER_SIZE + 8, text, n);
    return ERP_HEADER_SIZE + 8 + n;
}

/* The exec spec. erp_exec_encode writes it to out (if cap is large enough) and returns its size
 * either way, or 0 if the arguments break a rule above (argc, envc, an empty argv[0], an env
 * entry without NAME=, or a size above ERP_MAX_EXEC). */
static inline size_t erp_exec_encode(uint8_t *out, size_t cap, uint32_t flags, uint16_t rows, uint16_t cols,
                                     const char *cwd, const char *const *argv, uint32_t argc,
                                     const char *const *envp, uint32_t envc) {
    size_t need = ERP_EXEC_FIXED + strlen(cwd) + 1, pos, n;
    uint32_t i;
    if ((flags & ~ERP_CAST(uint32_t, ERP_EXEC_TTY)) != 0 || argc == 0 || argc > ERP_MAX_ARGC ||
        envc > ERP_MAX_ENVC || argv[0][0] == 0)
        return 0;
    for (i = 0; i < argc; ++i) {
        need += strlen(argv[i]) + 1;
        if (need > ERP_MAX_EXEC) return 0;
    }
    for (i = 0; i < envc; ++i) {
        if (envp[i][0] == '=' || strchr(envp[i], '=') == ERP_NULL) return 0;
        need += strlen(envp[i]) + 1;
        if (need > ERP_MAX_EXEC) return 0;
    }
    if (out == ERP_NULL || cap < need) return need;
    erp_put_u32(out, flags);
    erp_put_u16(out + 4, rows);
    erp_put_u16(out + 6, cols);
    erp_put_u32(out + 8, argc);
    erp_put_u32(out + 12, envc);
    pos = ERP_EXEC_FIXED;
    n = strlen(cwd) + 1;
    memcpy(out + pos, cwd, n);
    pos += n;
    for (i = 0; i < argc; ++i) {
        n = strlen(argv[i]) + 1;
        memcpy(out + pos, argv[i], n);
        pos += n;
    }
    for (i = 0; i < envc; ++i) {
        n = strlen(envp[i]) + 1;
        memcpy(out + pos, envp[i], n);
        pos += n;
    }
    return pos;
}

struct erp_exec {
    uint32_t flags;
    uint16_t rows, cols;
    uint32_t argc, envc;
    const char *cwd;     /* then argv, then env: argc + envc strings follow cwd, each after the NUL */
    const char *strings; /* first string after cwd (argv[0]) */
};

/* Validates a complete exec spec and fills *out (pointers into spec, which outlives them).
 * Returns ERP_OK, or ERP_E_LENGTH (too short, too long, trailing bytes, a missing NUL) or
 * ERP_E_VALUE (flags, counts, empty argv[0], an env entry without NAME=). */
static inline int erp_exec_parse(const uint8_t *spec, size_t len, struct erp_exec *out) {
    struct erp_exec e;
    size_t pos, start;
    uint32_t i, total;
    if (len < ERP_EXEC_FIXED + 1 || len > ERP_MAX_EXEC) return ERP_E_LENGTH;
    e.flags = erp_get_u32(spec);
    e.rows = erp_get_u16(spec + 4);
    e.cols = erp_get_u16(spec + 6);
    e.argc = erp_get_u32(spec + 8);
    e.envc = erp_get_u32(spec + 12);
    if ((e.flags & ~ERP_CAST(uint32_t, ERP_EXEC_TTY)) != 0 || e.argc == 0 || e.argc > ERP_MAX_ARGC ||
        e.envc > ERP_MAX_ENVC)
        return ERP_E_VALUE;
    total = 1 + e.argc + e.envc;
    pos = ERP_EXEC_FIXED;
    for (i = 0; i < total; ++i) {
        const uint8_t *nul;
        if (pos >= len) return ERP_E_LENGTH;
        start = pos;
        nul = ERP_CAST(const uint8_t *, memchr(spec + pos, 0, len - pos));
        if (nul == ERP_NULL) return ERP_E_LENGTH;
        pos = ERP_CAST(size_t, nul - spec) + 1;
        if (i == 1 && pos - start == 1) return ERP_E_VALUE; /* argv[0] empty */
        if (i > e.argc) {                                   /* env entry: NAME=value */
            const uint8_t *eq = ERP_CAST(const uint8_t *, memchr(spec + start, '=', pos - 1 - start));
            if (eq == ERP_NULL || eq == spec + start) return ERP_E_VALUE;
        }
    }
    if (pos != len) return ERP_E_LENGTH;
    e.cwd = ERP_CAST(const char *, ERP_CAST(const void *, spec + ERP_EXEC_FIXED));
    e.strings = e.cwd + strlen(e.cwd) + 1;
    *out = e;
    return ERP_OK;
}

/* Steps over one NUL-terminated string of a parsed spec. */
static inline const char *erp_next_string(const char *s) { return s + strlen(s) + 1; }

#endif
