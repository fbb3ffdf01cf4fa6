/* qemu-user TCG plugin (API v1, qemu 7.2): executed guest instructions per translated
 * block, written at exit as "TB <vaddr hex> <instructions executed>" lines to the plugin's
 * output (-D file). qemu-prof.sh folds the blocks into functions with the binary's symbol
 * table. Prototypes are declared here because Debian ships no qemu-plugin.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct {
    const char *target_name;
    struct { int min, cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus, max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*udata_cb_t)(qemu_plugin_id_t, void *);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb_t);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op, void *, uint64_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, udata_cb_t, void *);
void qemu_plugin_outs(const char *);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* One record per translation; a block translated twice gets two records, summed later. */
struct block { uint64_t vaddr, insns, execs; };
static struct block *blocks;
static size_t used, capacity;

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    if (used == capacity) {
        capacity = capacity ? capacity * 2 : 65536;
        /* Inline counters point into this array: never move it, chain new arrays instead. */
        struct block *fresh = calloc(capacity, sizeof *fresh);
        if (!fresh) return;
        if (blocks) {
            /* Keep the old array alive (its counters are live); record it as a link. */
            fresh[0].vaddr = (uint64_t)(uintptr_t)blocks;
            fresh[0].insns = used;
            fresh[0].execs = UINT64_MAX; /* marker: link to the previous array */
            used = 1;
        }
        blocks = fresh;
    }
    struct block *b = &blocks[used++];
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->insns = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->execs, 1);
}

static void dump(struct block *array, size_t n) {
    char line[96];
    for (size_t i = 0; i < n; i++) {
        struct block *b = &array[i];
        if (b->execs == UINT64_MAX) {
            dump((struct block *)(uintptr_t)b->vaddr, b->insns);
        } else if (b->execs) {
            snprintf(line, sizeof line, "TB %llx %llu\n", (unsigned long long)b->vaddr,
                     (unsigned long long)(b->insns * b->execs));
            qemu_plugin_outs(line);
        }
    }
}

static void at_exit(qemu_plugin_id_t id, void *p) { dump(blocks, used); }

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
