/*
 * virtio_hostile: a deliberately misbehaving virtio-net driver for one virtio-mmio device
 * (Version 2, virtio 1.2 §4.2.2), run as root inside the guest after the Linux driver has been
 * unbound from it. It breaks the driver-side rules of the split virtqueue (§2.7) and of the
 * network device (§5.1.6) on purpose; the host side judges the device's error counters, this
 * program only reports what it saw.
 *
 *   virtio_hostile <mmio_base_hex> <tx|rx|break|all|mrg>
 *
 * `mrg` runs alone, on an initialisation of its own with VIRTIO_NET_F_MRG_RXBUF and
 * VIRTIO_F_EVENT_IDX negotiated.
 *
 * stdout: KEY=VALUE lines. stderr: "virtio_hostile: error: ..." and exit 1 on a setup failure.
 * Exit 0 once the phase ran, whatever the device did. The device is always reset (§2.4) before
 * exit so that the Linux driver can be bound again.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o virtio_hostile virtio_hostile.c
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* virtio-mmio register offsets, Version 2 layout (§4.2.2). */
enum {
    REG_MAGIC = 0x000,
    REG_VERSION = 0x004,
    REG_DEVICE_ID = 0x008,
    REG_VENDOR_ID = 0x00c,
    REG_DEVICE_FEATURES = 0x010,
    REG_DEVICE_FEATURES_SEL = 0x014,
    REG_DRIVER_FEATURES = 0x020,
    REG_DRIVER_FEATURES_SEL = 0x024,
    REG_QUEUE_SEL = 0x030,
    REG_QUEUE_NUM_MAX = 0x034,
    REG_QUEUE_NUM = 0x038,
    REG_QUEUE_READY = 0x044,
    REG_QUEUE_NOTIFY = 0x050,
    REG_INTERRUPT_STATUS = 0x060,
    REG_INTERRUPT_ACK = 0x064,
    REG_STATUS = 0x070,
    REG_QUEUE_DESC_LOW = 0x080,
    REG_QUEUE_DESC_HIGH = 0x084,
    REG_QUEUE_DRIVER_LOW = 0x090,
    REG_QUEUE_DRIVER_HIGH = 0x094,
    REG_QUEUE_DEVICE_LOW = 0x0a0,
    REG_QUEUE_DEVICE_HIGH = 0x0a4,
    REG_CONFIG_GENERATION = 0x0fc,
};

#define MMIO_MAGIC 0x74726976u /* "virt" little-endian (§4.2.2) */
#define MMIO_VERSION 2u
#define DEVICE_ID_NET 1u /* §5 */

/* Device status bits (§2.1). */
#define S_ACKNOWLEDGE 0x01u
#define S_DRIVER 0x02u
#define S_DRIVER_OK 0x04u
#define S_FEATURES_OK 0x08u
#define S_NEEDS_RESET 0x40u

/* VIRTIO_F_VERSION_1 is feature bit 32: bit 0 of feature page 1 (§6). */
#define F_VERSION_1_PAGE1 0x1u
/* Feature page 0: VIRTIO_NET_F_MRG_RXBUF (§5.1.3) and VIRTIO_F_EVENT_IDX (§6). */
#define F_MRG_RXBUF (1u << 15)
#define F_EVENT_IDX (1u << 29)

/* Split virtqueue descriptor flags (§2.7.5). */
#define DESC_F_NEXT 1u
#define DESC_F_WRITE 2u

#define PAGE 4096u
#define DMA_PAGES 16u /* 64 KiB of anonymous memory handed to the device */

#define RX_QUEUE 0u /* receiveq1 (§5.1.2) */
#define TX_QUEUE 1u /* transmitq1 */
#define RX_QSIZE 8u
/*
 * The transmit test needs 25 descriptors at once (the 70000-byte chain alone takes 18 of them,
 * since each descriptor stays inside one 4 KiB page), so the transmitq is 32 entries: the chain
 * of 18 then fits the table and is well-formed apart from its total length.
 */
#define TX_QSIZE 32u

/* virtio_net_hdr with num_buffers: 12 bytes whenever VIRTIO_F_VERSION_1 is negotiated (§5.1.6). */
#define VNET_HDR_LEN 12u
#define ETH_HDR_LEN 14u
#define ETH_MIN_FRAME 60u /* without FCS */
#define ETHERTYPE_LOCAL_EXP 0x88b5u
#define TOO_LONG_FRAME 70000u /* > 65562: 12-byte header + 65550-byte frame */

#define POLL_US 10000u
#define TX_WAIT_MS 5000u
#define RX_WAIT_MS 10000u
#define BREAK_WAIT_MS 500u
#define MRG_WAIT_MS 3000u
#define DISK_ALARM_S 30u
#define MRG_SMALL_LEN 32u /* holds the 12-byte header, never a whole frame */
#define RESET_WAIT_MS 1000u

/* Page roles inside the DMA region; every ring has a page of its own. */
enum {
    PG_RX_DESC,
    PG_RX_AVAIL,
    PG_RX_USED,
    PG_TX_DESC,
    PG_TX_AVAIL,
    PG_TX_USED,
    PG_TX_SMALL, /* the small transmit buffers, at fixed offsets below */
    PG_TX_BIG,   /* one page repeated by every descriptor of the over-long frame */
    PG_RX_GUARD, /* zero-length and 8-byte receive buffers, surrounded by guard bytes */
    PG_RX_RO,    /* receive buffer the driver marks device-readable */
    PG_RX_GOOD,  /* two well-formed 2048-byte receive buffers */
    PG_COUNT
};
_Static_assert(PG_COUNT <= DMA_PAGES, "DMA region too small for the page plan");

/* Offsets inside PG_TX_SMALL. */
#define TXO_WRITABLE_HDR 0u
#define TXO_WRITABLE_BUF 64u
#define TXO_SHORT 256u
#define TXO_LOOP 512u
#define TXO_BAD_NEXT 768u
#define TXO_GOOD 1024u

/* Offsets inside PG_RX_GUARD: [0, 64) backs the zero-length buffer, [64, 72) the 8-byte one. */
#define RXO_ZERO 0u
#define RXO_SMALL 64u
#define RX_SMALL_LEN 8u
#define RX_GOOD_LEN 2048u
#define GUARD_BYTE 0xa5u
#define RO_BYTE 0x5au

#define BAD_ADDR 0xfffffffffff00000ull
#define BAD_NEXT 200u
#define BREAK_JUMP 100u

/* One descriptor table entry (§2.7.5); little-endian, as is the x86-64 guest. */
struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
_Static_assert(sizeof(struct vring_desc) == 16, "descriptor is 16 bytes (§2.7.5)");

/*
 * Driver view of one split virtqueue. Invariant: avail_shadow is the last value written to
 * avail.idx, used_seen the used.idx value up to which entries have been reported.
 */
struct vq {
    unsigned index;
    unsigned size;
    volatile struct vring_desc *desc;
    volatile uint16_t *avail; /* [0] flags, [1] idx, [2 + i] ring[i], [2 + size] used_event (§2.7.6) */
    volatile uint8_t *used;   /* u16 flags, u16 idx, {u32 id, u32 len}[size], u16 avail_event (§2.7.8) */
    uint64_t desc_pa, avail_pa, used_pa;
    uint16_t avail_shadow;
    uint16_t used_seen;
};

static volatile uint32_t *g_regs;      /* the MMIO window; NULL until mapped */
static volatile sig_atomic_t g_dirty;  /* Status has been written: reset before leaving */
static uint8_t *g_dma;                 /* DMA_PAGES pages, mlocked */
static uint64_t g_dma_pa[DMA_PAGES];   /* guest-physical address of each DMA page */

static uint32_t rd(uint32_t off) { return g_regs[off / 4]; }
static void wr(uint32_t off, uint32_t v) { g_regs[off / 4] = v; }

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* §2.4.2: a driver-initiated reset is complete once Status reads back 0. The device is then
 * left ACKNOWLEDGEd, the state Linux's virtio core leaves an unbound device in (it resets and
 * acknowledges on remove): binding adds DRIVER to what it reads back, and a device that enforces
 * the §3.1.1 order refuses DRIVER without ACKNOWLEDGE. */
static int reset_device(void) {
    wr(REG_STATUS, 0);
    const uint64_t deadline = now_ms() + RESET_WAIT_MS;
    while (rd(REG_STATUS) != 0) {
        if (now_ms() >= deadline) return 0;
        usleep(POLL_US);
    }
    wr(REG_STATUS, S_ACKNOWLEDGE);
    return rd(REG_STATUS) == S_ACKNOWLEDGE;
}

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    fputs("virtio_hostile: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    /* Leave the device as the Linux driver expects to find it (reset), not half-initialised. */
    if (g_regs && g_dirty && !reset_device()) fputs("virtio_hostile: error: device did not reset\n", stderr);
    exit(1);
}

/* Killed mid-run (e.g. by the caller's timeout): reset the device so it can be re-bound. */
static void on_signal(int sig) {
    static const char msg[] = "virtio_hostile: error: interrupted by a signal; device reset\n";
    if (g_regs && g_dirty) {
        g_regs[REG_STATUS / 4] = 0;
        g_regs[REG_STATUS / 4] = S_ACKNOWLEDGE;
    }
    if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) { /* nothing left to report to */ }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void set_status_bits(uint32_t bits) {
    g_dirty = 1;
    wr(REG_STATUS, rd(REG_STATUS) | bits);
}

/* Reads InterruptStatus and acknowledges exactly the bits it reported (§4.2.2). */
static void ack_interrupts(uint32_t *seen) {
    const uint32_t v = rd(REG_INTERRUPT_STATUS);
    if (v) {
        wr(REG_INTERRUPT_ACK, v);
        *seen |= v;
    }
}

static int parse_base(const char *s, uint64_t *out) {
    if (!isxdigit((unsigned char)s[0])) return -1;
    errno = 0;
    char *end = NULL;
    const unsigned long long v = strtoull(s, &end, 16);
    if (errno != 0 || end == s || *end != '\0') return -1;
    *out = v;
    return 0;
}

static void map_registers(uint64_t base) {
    const int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) die("open /dev/mem: %s", strerror(errno));
    void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)base);
    if (p == MAP_FAILED) die("mmap /dev/mem at 0x%" PRIx64 ": %s", base, strerror(errno));
    close(fd);
    g_regs = p;
}

/* Guest-physical address of a resident page via /proc/self/pagemap: bit 63 present, bits 0-54 PFN. */
static uint64_t virt_to_phys(int pagemap, const void *va) {
    uint64_t entry = 0;
    const off_t off = (off_t)((uintptr_t)va / PAGE) * (off_t)sizeof entry;
    if (pread(pagemap, &entry, sizeof entry, off) != (ssize_t)sizeof entry) die("read /proc/self/pagemap: %s", strerror(errno));
    if (!(entry >> 63)) die("DMA page %p is not present", va);
    const uint64_t pfn = entry & ((1ull << 55) - 1);
    if (pfn == 0) die("/proc/self/pagemap hides PFNs (run as root)");
    return pfn * PAGE;
}

/*
 * Invariant afterwards: every DMA page is resident, locked against swap-out, zeroed and has a
 * known guest-physical address. Pages need not be contiguous, so no buffer crosses a page.
 */
static void alloc_dma(void) {
    if (sysconf(_SC_PAGESIZE) != (long)PAGE) die("page size is not 4096");
    void *p = mmap(NULL, (size_t)DMA_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) die("mmap DMA region: %s", strerror(errno));
    if (mlock(p, (size_t)DMA_PAGES * PAGE) != 0) die("mlock DMA region: %s", strerror(errno));
    g_dma = p;
    for (unsigned i = 0; i < DMA_PAGES; ++i) memset(g_dma + (size_t)i * PAGE, 0, PAGE);
    const int pm = open("/proc/self/pagemap", O_RDONLY);
    if (pm < 0) die("open /proc/self/pagemap: %s", strerror(errno));
    for (unsigned i = 0; i < DMA_PAGES; ++i) g_dma_pa[i] = virt_to_phys(pm, g_dma + (size_t)i * PAGE);
    close(pm);
}

static uint8_t *page_va(unsigned page) { return g_dma + (size_t)page * PAGE; }
static uint64_t page_pa(unsigned page, unsigned off) { return g_dma_pa[page] + off; }

static void set_desc(struct vq *q, unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    q->desc[i].addr = addr;
    q->desc[i].len = len;
    q->desc[i].flags = flags;
    q->desc[i].next = next;
}

static uint16_t used_idx(const struct vq *q) { return *(volatile const uint16_t *)(q->used + 2); }
static uint32_t used_id(const struct vq *q, uint16_t n) { return *(volatile const uint32_t *)(q->used + 4 + 8 * (n % q->size)); }
static uint32_t used_len(const struct vq *q, uint16_t n) { return *(volatile const uint32_t *)(q->used + 8 + 8 * (n % q->size)); }

/*
 * §2.7.13: ring entries are written first, then a barrier, then avail.idx, then a barrier before
 * the notification (§2.7.13.4, §4.2.3.3) so the device cannot see the index before the entries.
 */
static void publish(struct vq *q, const uint16_t *heads, unsigned n) {
    for (unsigned k = 0; k < n; ++k) q->avail[2 + (uint16_t)(q->avail_shadow + k) % q->size] = heads[k];
    __sync_synchronize();
    q->avail_shadow = (uint16_t)(q->avail_shadow + n);
    q->avail[1] = q->avail_shadow;
    __sync_synchronize();
    wr(REG_QUEUE_NOTIFY, q->index);
}

/* Polls used.idx until `want` entries past used_seen have appeared or the timeout expires. */
static uint16_t wait_used(const struct vq *q, unsigned want, unsigned timeout_ms, uint32_t *ints) {
    const uint64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        ack_interrupts(ints);
        const uint16_t idx = used_idx(q);
        if ((uint16_t)(idx - q->used_seen) >= want || now_ms() >= deadline) {
            /* §2.7.14: used entries are read only after used.idx. */
            __sync_synchronize();
            return idx;
        }
        usleep(POLL_US);
    }
}

/*
 * Prints KEY_IDS and KEY_LENS for the entries between used_seen and idx, then advances used_seen.
 * A device that ran used.idx more than a ring's worth ahead is reported as such, not walked.
 */
static void report_used(struct vq *q, const char *key, uint16_t idx) {
    const uint16_t count = (uint16_t)(idx - q->used_seen);
    const unsigned shown = count <= q->size ? count : 0;
    printf("%s_IDS=", key);
    for (unsigned k = 0; k < shown; ++k) printf("%s%" PRIu32, k ? "," : "", used_id(q, (uint16_t)(q->used_seen + k)));
    printf("\n%s_LENS=", key);
    for (unsigned k = 0; k < shown; ++k) printf("%s%" PRIu32, k ? "," : "", used_len(q, (uint16_t)(q->used_seen + k)));
    printf("\n");
    if (count > q->size) printf("%s_USED_OVERRUN=1\n", key);
    q->used_seen = idx;
}

/* §4.2.3.2: queue must be idle after reset; size, ring addresses, then QueueReady. */
static void setup_queue(struct vq *q, unsigned index, unsigned size, unsigned pg_desc, unsigned pg_avail, unsigned pg_used) {
    q->index = index;
    q->size = size;
    q->desc = (volatile struct vring_desc *)page_va(pg_desc);
    q->avail = (volatile uint16_t *)page_va(pg_avail);
    q->used = page_va(pg_used);
    q->desc_pa = page_pa(pg_desc, 0);
    q->avail_pa = page_pa(pg_avail, 0);
    q->used_pa = page_pa(pg_used, 0);
    q->avail_shadow = 0;
    q->used_seen = 0;

    wr(REG_QUEUE_SEL, index);
    if (rd(REG_QUEUE_READY) != 0) die("queue %u is ready right after reset", index);
    const uint32_t max = rd(REG_QUEUE_NUM_MAX);
    printf("QUEUE%u_NUM_MAX=%" PRIu32 "\n", index, max);
    if (max < size) die("queue %u: QueueNumMax %" PRIu32 " < %u", index, max, size);
    wr(REG_QUEUE_NUM, size);
    wr(REG_QUEUE_DESC_LOW, (uint32_t)q->desc_pa);
    wr(REG_QUEUE_DESC_HIGH, (uint32_t)(q->desc_pa >> 32));
    wr(REG_QUEUE_DRIVER_LOW, (uint32_t)q->avail_pa);
    wr(REG_QUEUE_DRIVER_HIGH, (uint32_t)(q->avail_pa >> 32));
    wr(REG_QUEUE_DEVICE_LOW, (uint32_t)q->used_pa);
    wr(REG_QUEUE_DEVICE_HIGH, (uint32_t)(q->used_pa >> 32));
    wr(REG_QUEUE_READY, 1);
    if (rd(REG_QUEUE_READY) != 1) die("queue %u: QueueReady did not stick", index);
}

/* §4.2.3.1 then §3.1.1 steps 1-8; VIRTIO_F_VERSION_1 and `features0` (page 0) are negotiated. */
static void init_device(struct vq *rx, struct vq *tx, uint32_t features0) {
    const uint32_t magic = rd(REG_MAGIC), version = rd(REG_VERSION), id = rd(REG_DEVICE_ID);
    if (magic != MMIO_MAGIC) die("MagicValue is 0x%08" PRIx32 ", not 0x%08x", magic, MMIO_MAGIC);
    if (version != MMIO_VERSION) die("Version is %" PRIu32 ", not %u", version, MMIO_VERSION);
    if (id != DEVICE_ID_NET) die("DeviceID is %" PRIu32 ", not %u (net)", id, DEVICE_ID_NET);
    const uint32_t initial = rd(REG_STATUS);
    printf("VENDOR_ID=0x%08" PRIx32 "\nINITIAL_STATUS=0x%02" PRIx32 "\n", rd(REG_VENDOR_ID), initial);
    /* A driver that still owns the device would race with us on its rings. */
    if (initial & S_DRIVER_OK) die("Status 0x%02" PRIx32 " has DRIVER_OK: unbind the Linux driver first", initial);

    g_dirty = 1;
    if (!reset_device()) die("Status did not read 0 after reset");
    set_status_bits(S_ACKNOWLEDGE);
    set_status_bits(S_DRIVER);

    wr(REG_DEVICE_FEATURES_SEL, 0);
    const uint32_t f0 = rd(REG_DEVICE_FEATURES);
    wr(REG_DEVICE_FEATURES_SEL, 1);
    const uint32_t f1 = rd(REG_DEVICE_FEATURES);
    printf("DEVICE_FEATURES=0x%08" PRIx32 "%08" PRIx32 "\n", f1, f0);
    if (!(f1 & F_VERSION_1_PAGE1)) die("device does not offer VIRTIO_F_VERSION_1");
    if ((f0 & features0) != features0) die("device does not offer features 0x%08" PRIx32, features0 & ~f0);
    wr(REG_DRIVER_FEATURES_SEL, 0);
    wr(REG_DRIVER_FEATURES, features0);
    wr(REG_DRIVER_FEATURES_SEL, 1);
    wr(REG_DRIVER_FEATURES, F_VERSION_1_PAGE1);
    set_status_bits(S_FEATURES_OK);
    const uint32_t st = rd(REG_STATUS);
    if (!(st & S_FEATURES_OK)) die("device refused FEATURES_OK (Status 0x%02" PRIx32 ")", st);

    setup_queue(rx, RX_QUEUE, RX_QSIZE, PG_RX_DESC, PG_RX_AVAIL, PG_RX_USED);
    setup_queue(tx, TX_QUEUE, TX_QSIZE, PG_TX_DESC, PG_TX_AVAIL, PG_TX_USED);
    set_status_bits(S_DRIVER_OK);
    printf("CONFIG_GENERATION=%" PRIu32 "\n", rd(REG_CONFIG_GENERATION));
}

/* 12 zero header bytes, then a broadcast frame of ethertype 0x88b5 carrying `text`. */
static void build_frame(uint8_t *p, size_t frame_len, const char *text) {
    static const uint8_t src[6] = {0x02, 0x45, 0x4d, 0x42, 0x45, 0x52}; /* locally administered, unicast */
    memset(p, 0, VNET_HDR_LEN + frame_len);
    uint8_t *eth = p + VNET_HDR_LEN;
    memset(eth, 0xff, 6);
    memcpy(eth + 6, src, sizeof src);
    eth[12] = (uint8_t)(ETHERTYPE_LOCAL_EXP >> 8);
    eth[13] = (uint8_t)(ETHERTYPE_LOCAL_EXP & 0xff);
    const size_t n = strlen(text);
    memcpy(eth + ETH_HDR_LEN, text, n < frame_len - ETH_HDR_LEN ? n : frame_len - ETH_HDR_LEN);
}

static void print_status(void) { printf("STATUS=0x%02" PRIx32 "\n", rd(REG_STATUS)); }

/*
 * Transmit (§5.1.6.2) seven chains, six of them invalid, behind one notification:
 *   head 0     : readable header + device-writable buffer (transmit buffers are read-only)
 *   head 2     : 4 bytes, shorter than virtio_net_hdr + Ethernet header
 *   head 3     : buffer address outside guest RAM
 *   head 4     : NEXT pointing at itself (§2.7.5.2 forbids loops)
 *   head 5..22 : 18 descriptors over one page, 70000 bytes in all (> 65562)
 *   head 23    : NEXT with next = 200, beyond the table
 *   head 24    : one well-formed 72-byte frame
 */
static void phase_tx(struct vq *tx) {
    uint8_t *small = page_va(PG_TX_SMALL);
    unsigned d = 0;
    uint16_t heads[7];
    unsigned nheads = 0;

    memset(small + TXO_WRITABLE_HDR, 0, VNET_HDR_LEN);
    heads[nheads++] = (uint16_t)d;
    set_desc(tx, d, page_pa(PG_TX_SMALL, TXO_WRITABLE_HDR), VNET_HDR_LEN, DESC_F_NEXT, (uint16_t)(d + 1));
    ++d;
    set_desc(tx, d, page_pa(PG_TX_SMALL, TXO_WRITABLE_BUF), 64, DESC_F_WRITE, 0);
    ++d;

    heads[nheads++] = (uint16_t)d;
    set_desc(tx, d, page_pa(PG_TX_SMALL, TXO_SHORT), 4, 0, 0);
    ++d;

    heads[nheads++] = (uint16_t)d;
    set_desc(tx, d, BAD_ADDR, 100, 0, 0);
    ++d;

    heads[nheads++] = (uint16_t)d;
    set_desc(tx, d, page_pa(PG_TX_SMALL, TXO_LOOP), 16, DESC_F_NEXT, (uint16_t)d);
    ++d;

    /* Every piece re-reads the same page; the first piece starts with a valid header and frame. */
    build_frame(page_va(PG_TX_BIG), PAGE - VNET_HDR_LEN, "EMBER-HOSTILE-TOOLONG");
    heads[nheads++] = (uint16_t)d;
    for (uint32_t left = TOO_LONG_FRAME; left > 0;) {
        const uint32_t piece = left > 4000u ? 4000u : left;
        left -= piece;
        set_desc(tx, d, page_pa(PG_TX_BIG, 0), piece, left ? DESC_F_NEXT : 0, left ? (uint16_t)(d + 1) : 0);
        ++d;
    }

    heads[nheads++] = (uint16_t)d;
    set_desc(tx, d, page_pa(PG_TX_SMALL, TXO_BAD_NEXT), 16, DESC_F_NEXT, BAD_NEXT);
    ++d;

    build_frame(small + TXO_GOOD, ETH_MIN_FRAME, "EMBER-HOSTILE-OK");
    heads[nheads++] = (uint16_t)d;
    set_desc(tx, d, page_pa(PG_TX_SMALL, TXO_GOOD), VNET_HDR_LEN + ETH_MIN_FRAME, 0, 0);
    ++d;

    if (d > tx->size) die("transmit plan needs %u descriptors, queue has %u", d, tx->size);

    uint32_t ints = 0;
    publish(tx, heads, nheads);
    printf("TX_POSTED=%u\n", nheads);
    const uint16_t idx = wait_used(tx, nheads, TX_WAIT_MS, &ints);
    printf("TX_USED=%u\n", (unsigned)idx);
    report_used(tx, "TX", idx);
    printf("TX_INT=0x%" PRIx32 "\n", ints);
    print_status();
}

static int all_bytes(const uint8_t *p, size_t n, uint8_t v) {
    for (size_t i = 0; i < n; ++i)
        if (p[i] != v) return 0;
    return 1;
}

/*
 * Receive buffers (§5.1.6.3), four of five invalid or unusable:
 *   head 0 : device-writable, length 0
 *   head 1 : 2048 bytes without F_WRITE (device-readable)
 *   head 2 : device-writable, 8 bytes (smaller than the 12-byte header)
 *   head 3, 4 : device-writable, 2048 bytes each
 * Guard bytes around heads 0 and 2 and the content of head 1 must survive untouched.
 */
static void phase_rx(struct vq *rx) {
    uint8_t *guard = page_va(PG_RX_GUARD);
    uint8_t *ro = page_va(PG_RX_RO);
    memset(guard, GUARD_BYTE, PAGE);
    memset(ro, RO_BYTE, RX_GOOD_LEN);
    memset(page_va(PG_RX_GOOD), 0, PAGE);

    set_desc(rx, 0, page_pa(PG_RX_GUARD, RXO_ZERO), 0, DESC_F_WRITE, 0);
    set_desc(rx, 1, page_pa(PG_RX_RO, 0), RX_GOOD_LEN, 0, 0);
    set_desc(rx, 2, page_pa(PG_RX_GUARD, RXO_SMALL), RX_SMALL_LEN, DESC_F_WRITE, 0);
    set_desc(rx, 3, page_pa(PG_RX_GOOD, 0), RX_GOOD_LEN, DESC_F_WRITE, 0);
    set_desc(rx, 4, page_pa(PG_RX_GOOD, RX_GOOD_LEN), RX_GOOD_LEN, DESC_F_WRITE, 0);
    static const uint16_t heads[5] = {0, 1, 2, 3, 4};
    const unsigned nheads = sizeof heads / sizeof heads[0];

    uint32_t ints = 0;
    const uint16_t start = rx->used_seen;
    publish(rx, heads, nheads);
    printf("RX_POSTED=%u\n", nheads);
    const uint16_t idx = wait_used(rx, nheads, RX_WAIT_MS, &ints);
    const uint16_t count = (uint16_t)(idx - start);
    printf("RX_USED=%u\n", (unsigned)count);

    /* Frames that landed in the good buffers, as hex of up to 64 bytes after the header. */
    for (uint16_t k = 0; k < count && k < rx->size; ++k) {
        const uint32_t id = used_id(rx, (uint16_t)(start + k));
        const uint32_t len = used_len(rx, (uint16_t)(start + k));
        if ((id != 3 && id != 4) || len <= VNET_HDR_LEN || len > RX_GOOD_LEN) continue;
        const uint8_t *frame = page_va(PG_RX_GOOD) + (id == 3 ? 0 : RX_GOOD_LEN) + VNET_HDR_LEN;
        const uint32_t n = len - VNET_HDR_LEN < 64 ? len - VNET_HDR_LEN : 64;
        printf("RX_FRAME%u=", (unsigned)k);
        for (uint32_t i = 0; i < n; ++i) printf("%02x", frame[i]);
        printf("\n");
    }
    report_used(rx, "RX", idx);

    const int bounds_ok = all_bytes(guard, RXO_SMALL, GUARD_BYTE) &&
                          all_bytes(guard + RXO_SMALL + RX_SMALL_LEN, PAGE - RXO_SMALL - RX_SMALL_LEN, GUARD_BYTE);
    printf("RX_BOUNDS_OK=%d\n", bounds_ok);
    printf("RX_READONLY_INTACT=%d\n", all_bytes(ro, RX_GOOD_LEN, RO_BYTE));
    printf("RX_INT=0x%" PRIx32 "\n", ints);
    print_status();
}

/* avail.idx runs BREAK_JUMP entries ahead, more than the queue holds (§2.7.13.3 violation). */
static void phase_break(struct vq *tx) {
    uint32_t ints = 0;
    tx->avail_shadow = (uint16_t)(tx->avail_shadow + BREAK_JUMP);
    __sync_synchronize();
    tx->avail[1] = tx->avail_shadow;
    __sync_synchronize();
    wr(REG_QUEUE_NOTIFY, tx->index);
    printf("BREAK_AVAIL_IDX=%u\n", (unsigned)tx->avail_shadow);
    const uint64_t deadline = now_ms() + BREAK_WAIT_MS;
    while (now_ms() < deadline) {
        ack_interrupts(&ints);
        usleep(POLL_US);
    }
    ack_interrupts(&ints);
    const uint32_t st = rd(REG_STATUS);
    printf("BREAK_INT=0x%" PRIx32 "\n", ints);
    printf("STATUS=0x%02" PRIx32 "\n", st);
    printf("NEEDS_RESET=%d\n", (st & S_NEEDS_RESET) ? 1 : 0);
}

/* A 4 KiB O_DIRECT read of the root disk, which the same host thread serves as this device:
 * 1 if it completed. A device that busies that thread forever makes the alarm end us. */
static int disk_answers(void) {
    const int fd = open("/dev/vda", O_RDONLY | O_DIRECT);
    if (fd < 0) die("open /dev/vda: %s", strerror(errno));
    void *buf = NULL;
    if (posix_memalign(&buf, PAGE, PAGE) != 0) die("posix_memalign failed");
    alarm(DISK_ALARM_S);
    const ssize_t n = pread(fd, buf, PAGE, (off_t)(8u << 20));
    alarm(0);
    free(buf);
    close(fd);
    return n == (ssize_t)PAGE;
}

/*
 * Mergeable receive buffers (§5.1.6.3.2, §5.1.6.4): first one 32-byte buffer, too small for any
 * frame the host sends (ARP, ICMP), which the device must hold back without busying itself (the
 * driver adds nothing for MRG_WAIT_MS, and the root disk must answer meanwhile); then two
 * 2048-byte buffers, and the held frame arrives spread over the small one and the next, with
 * num_buffers = 2 in its header.
 */
static void phase_mrg(struct vq *rx) {
    uint8_t *small = page_va(PG_RX_GUARD);
    memset(small, 0, PAGE);
    memset(page_va(PG_RX_GOOD), 0, PAGE);
    set_desc(rx, 0, page_pa(PG_RX_GUARD, 0), MRG_SMALL_LEN, DESC_F_WRITE, 0);
    set_desc(rx, 1, page_pa(PG_RX_GOOD, 0), RX_GOOD_LEN, DESC_F_WRITE, 0);
    set_desc(rx, 2, page_pa(PG_RX_GOOD, RX_GOOD_LEN), RX_GOOD_LEN, DESC_F_WRITE, 0);
    static const uint16_t first[1] = {0}, more[2] = {1, 2};

    uint32_t ints = 0;
    publish(rx, first, 1);
    uint16_t idx = wait_used(rx, 1, MRG_WAIT_MS, &ints);
    printf("MRG_EARLY_USED=%u\n", (unsigned)(uint16_t)(idx - rx->used_seen));
    printf("MRG_DISK_OK=%d\n", disk_answers());
    publish(rx, more, 2);
    idx = wait_used(rx, 2, RX_WAIT_MS, &ints);
    report_used(rx, "MRG", idx);
    printf("MRG_NUM_BUFFERS=%u\n", (unsigned)(small[10] | (small[11] << 8)));
    print_status();
}

static void usage(void) __attribute__((noreturn));
static void usage(void) {
    die("usage: virtio_hostile <mmio_base_hex> <tx|rx|break|all|mrg>");
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) usage();
    uint64_t base = 0;
    if (parse_base(argv[1], &base) != 0) die("bad MMIO base '%s' (hex expected)", argv[1]);
    if (base == 0 || base % PAGE != 0) die("MMIO base 0x%" PRIx64 " is not a non-zero multiple of 4096", base);
    const char *phase = argv[2];
    const int do_tx = !strcmp(phase, "tx") || !strcmp(phase, "all");
    const int do_rx = !strcmp(phase, "rx") || !strcmp(phase, "all");
    const int do_break = !strcmp(phase, "break") || !strcmp(phase, "all");
    const int do_mrg = !strcmp(phase, "mrg");
    if (!do_tx && !do_rx && !do_break && !do_mrg) die("unknown phase '%s' (tx, rx, break, all or mrg)", phase);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);

    alloc_dma();
    map_registers(base);
    struct vq rx, tx;
    memset(&rx, 0, sizeof rx);
    memset(&tx, 0, sizeof tx);
    init_device(&rx, &tx, do_mrg ? F_MRG_RXBUF | F_EVENT_IDX : 0);

    /* `all` runs the phases on one initialisation; the break phase must come last. */
    if (do_tx) {
        printf("PHASE=tx\n");
        phase_tx(&tx);
    }
    if (do_rx) {
        printf("PHASE=rx\n");
        phase_rx(&rx);
    }
    if (do_break) {
        printf("PHASE=break\n");
        phase_break(&tx);
    }
    if (do_mrg) {
        printf("PHASE=mrg\n");
        phase_mrg(&rx);
    }

    const int ok = reset_device();
    g_dirty = 0;
    printf("RESET_OK=%d\n", ok);
    return 0;
}
