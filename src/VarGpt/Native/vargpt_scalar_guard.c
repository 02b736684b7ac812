/*
 * libvargpt_scalar_guard.so: frees TorchSharp's native Scalars a second late.
 *
 * TorchSharp 0.107 passes `scalar.Handle` to libtorch and nothing keeps the managed Scalar alive during the call, so a
 * GC in that window can run its finalizer, which calls THSTorch_dispose_scalar and deletes the at::Scalar libtorch is
 * about to read ("Expected false to be true ... toFloat at c10/core/Scalar.h:140", docs/reliability.md). VarGpt binds
 * TorchSharp's P/Invokes to this library (VarGpt.Torch.ScalarGuard, a DllImportResolver); it is linked with a
 * DT_NEEDED on libLibTorchSharp.so, so every other THS* symbol resolves to LibTorchSharp's own function, and only
 * THSTorch_dispose_scalar lands here: it queues the pointer and really frees entries older than DELAY_NS, long after
 * any native call that read the handle has used it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#define DELAY_NS 1000000000LL
/* Queue bound: 2^18 entries (4 MiB of queue + 8 MiB of 32-byte Scalars) holds a second of disposals at up to a quarter
 * million a second (a loop of tiny tensor ops reaches a few hundred thousand); beyond it the oldest entry is freed early (counted): memory stays bounded whatever
 * the rate, and an early entry has still waited 2^18 disposals, orders of magnitude longer than the race window. */
#define MAX_PENDING (1L << 18)
#define FIRST_CAPACITY 4096L

typedef void (*dispose_fn)(void *);

struct entry { void *scalar; long long t; };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry *ring;
static long capacity, head, count;
static long deferred, freed, early;
static dispose_fn real_dispose;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* a tick of a few ms is plenty for a 1 s delay; CLOCK_MONOTONIC costs ~200 ns under kvm-clock */
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* LibTorchSharp's own function, found through this library's DT_NEEDED (RTLD_NEXT skips this library). Resolved when
 * the library loads: its dependencies are loaded and initialised first. */
__attribute__((constructor)) static void resolve(void)
{
    real_dispose = (dispose_fn)dlsym(RTLD_NEXT, "THSTorch_dispose_scalar");
}

static void pop_free(void)
{
    void *s = ring[head].scalar;
    head = (head + 1) % capacity;
    count--;
    freed++;
    real_dispose(s);
}

/* Room for one more entry: grow the ring (doubling, up to MAX_PENDING), else free the oldest early. */
static void make_room(void)
{
    if (count < capacity) return;
    if (capacity < MAX_PENDING) {
        long n = capacity == 0 ? FIRST_CAPACITY : capacity * 2;
        struct entry *r = malloc((size_t)n * sizeof *r);
        if (r) {
            for (long i = 0; i < count; i++) r[i] = ring[(head + i) % capacity];
            free(ring);
            ring = r;
            capacity = n;
            head = 0;
            return;
        }
    }
    early++;
    pop_free();
}

void THSTorch_dispose_scalar(void *scalar)
{
    if (!scalar) return;
    if (!real_dispose) return; /* never reached: VarGpt checks vargpt_scalar_guard_ready() before binding here */
    long long t = now_ns();
    pthread_mutex_lock(&lock);
    make_room();
    ring[(head + count) % capacity] = (struct entry){ scalar, t };
    count++;
    deferred++;
    while (count > 0 && t - ring[head].t >= DELAY_NS) pop_free();
    pthread_mutex_unlock(&lock);
}

/* 1 when LibTorchSharp's THSTorch_dispose_scalar was found (the guard can free what it defers). */
int vargpt_scalar_guard_ready(void) { return real_dispose != NULL; }

static long read_locked(const long *v)
{
    pthread_mutex_lock(&lock);
    long r = *v;
    pthread_mutex_unlock(&lock);
    return r;
}

/* Counters for tests and diagnostics: Scalars deferred, really freed, freed before their delay (queue full), waiting. */
long vargpt_scalar_guard_deferred(void) { return read_locked(&deferred); }
long vargpt_scalar_guard_freed(void) { return read_locked(&freed); }
long vargpt_scalar_guard_early(void) { return read_locked(&early); }
long vargpt_scalar_guard_pending(void) { return read_locked(&count); }

/* Age in milliseconds of the oldest waiting Scalar, -1 when none waits (entries leave at the next dispose after DELAY_NS). */
long vargpt_scalar_guard_oldest_ms(void)
{
    pthread_mutex_lock(&lock);
    long r = count == 0 ? -1 : (long)((now_ns() - ring[head].t) / 1000000LL);
    pthread_mutex_unlock(&lock);
    return r;
}
