/*
 * prime_count: the number of primes p with lo <= p < hi, exact over the whole u64 range.
 *
 * Odd-only segmented sieve of Eratosthenes. Base primes go up to min(isqrt(hi - 1), 2^21).
 * Every survivor below (2^21 + 1)^2 is prime; larger survivors (only when hi > 2^42) are
 * confirmed with a deterministic Miller-Rabin test using Montgomery arithmetic built from
 * 32x32->64 multiplies, so no runtime library is needed.
 *
 * Output (reducer sum_u64): one u64, the prime count.
 */
#include "ccgsc_abi.h"

#define BASE_LIMIT 2097152u            /* 2^21 */
#define MAX_BASE_PRIMES 155611u        /* odd primes up to 2^21 (pi(2^21) - 1) */
#define SEG_BYTES 32768u               /* one L1-sized segment */
#define SEG_BITS (SEG_BYTES * 8u)      /* one bit per odd number */
#define SEG_SPAN ((uint64_t)SEG_BITS * 2u)
#define SMALL_PRIME 65536u            /* below this, mark with byte-stride loops */
#define MR_FROM ((uint64_t)(BASE_LIMIT + 1u) * (uint64_t)(BASE_LIMIT + 1u))

static uint32_t base_primes[MAX_BASE_PRIMES + 1];
static uint32_t next_bit[MAX_BASE_PRIMES + 1];
static uint32_t base_count;   /* odd primes stored in base_primes */
static uint32_t base_limit;   /* base_primes holds every odd prime <= base_limit */
static uint8_t small_sieve[BASE_LIMIT / 16u + 1u] __attribute__((aligned(16)));
static uint8_t segment[SEG_BYTES] __attribute__((aligned(16)));

/* Fill base_primes with every odd prime <= limit (limit <= BASE_LIMIT). */
static void ensure_base_primes(uint32_t limit) {
    if (limit <= base_limit) return;
    /* bit j of small_sieve <-> odd number 2j + 1 */
    uint32_t nbits = limit / 2u + 1u;
    memset(small_sieve, 0, (nbits + 7u) / 8u);
    for (uint32_t i = 1; (2u * i + 1u) * (2u * i + 1u) <= limit; i++) {
        if (small_sieve[i >> 3] & (1u << (i & 7u))) continue;
        uint32_t p = 2u * i + 1u;
        for (uint32_t j = (p * p) / 2u; j < nbits; j += p) small_sieve[j >> 3] |= (uint8_t)(1u << (j & 7u));
    }
    base_count = 0;
    for (uint32_t i = 1; i < nbits; i++) {
        uint32_t v = 2u * i + 1u;
        if (v > limit) break;
        if (!(small_sieve[i >> 3] & (1u << (i & 7u)))) base_primes[base_count++] = v;
    }
    base_limit = limit;
}

static uint64_t isqrt_u64(uint64_t n) {
    uint64_t r = (uint64_t)__builtin_sqrt((double)n);
    if (r > 0xFFFFFFFFull) r = 0xFFFFFFFFull;
    while (r * r > n) r--;
    while (r < 0xFFFFFFFFull && (r + 1u) * (r + 1u) <= n) r++;
    return r;
}

/* ---- Miller-Rabin with 64-bit Montgomery arithmetic ---- */

/*
 * High 64 bits of a 64x64 product from four 32x32->64 multiplies. The empty asm keeps the
 * optimiser from folding this back into a 128-bit multiply, which would need a runtime helper.
 */
static inline uint64_t mulhi64(uint64_t a, uint64_t b) {
    uint64_t a_lo = (uint32_t)a, a_hi = a >> 32, b_lo = (uint32_t)b, b_hi = b >> 32;
    __asm__("" : "+r"(a_hi));
    uint64_t p0 = a_lo * b_lo, p1 = a_lo * b_hi, p2 = a_hi * b_lo, p3 = a_hi * b_hi;
    uint64_t mid = (p0 >> 32) + (uint32_t)p1 + (uint32_t)p2;
    return p3 + (p1 >> 32) + (p2 >> 32) + (mid >> 32);
}

/* a * b * 2^-64 mod n, for a, b < n, n odd, ninv = n^-1 mod 2^64. */
static inline uint64_t montmul(uint64_t a, uint64_t b, uint64_t n, uint64_t ninv) {
    uint64_t lo = a * b, hi = mulhi64(a, b);
    uint64_t mh = mulhi64(lo * ninv, n);
    uint64_t r = hi - mh;
    return hi < mh ? r + n : r;
}

static inline uint64_t addmod(uint64_t x, uint64_t y, uint64_t n) {
    uint64_t s = x + y;
    return (s < x || s >= n) ? s - n : s;
}

static int is_prime_mr(uint64_t n) {
    static const uint64_t bases[12] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
    /* Known bounds under which the first 7 / 9 prime bases are already deterministic. */
    uint32_t nbases = n < 341550071728321ull ? 7u : (n < 3825123056546413051ull ? 9u : 12u);
    uint64_t ninv = n;
    for (int i = 0; i < 5; i++) ninv *= 2u - n * ninv;
    uint64_t one = (0u - n) % n; /* 2^64 mod n = Montgomery 1 */
    uint64_t minus_one = n - one;
    uint64_t d = n - 1u;
    uint32_t s = (uint32_t)__builtin_ctzll(d);
    d >>= s;
    for (uint32_t b = 0; b < nbases; b++) {
        /* Montgomery form of the base: a * 2^64 mod n, by double-and-add */
        uint64_t a = bases[b], am = 0, add = one;
        while (a) {
            if (a & 1u) am = addmod(am, add, n);
            add = addmod(add, add, n);
            a >>= 1;
        }
        uint64_t x = one, e = d, base = am;
        while (e) {
            if (e & 1u) x = montmul(x, base, n, ninv);
            base = montmul(base, base, n, ninv);
            e >>= 1;
        }
        if (x == one || x == minus_one) continue;
        uint32_t r = 1;
        for (; r < s; r++) {
            x = montmul(x, x, n, ninv);
            if (x == minus_one) break;
        }
        if (r == s) return 0;
    }
    return 1;
}

/* ---- segmented sieve ---- */

static uint64_t count_primes(uint64_t lo, uint64_t hi) {
    uint64_t count = 0;
    if (lo <= 2u && 2u < hi) count = 1;
    uint64_t start = lo < 3u ? 3u : lo;
    if (start >= hi) return count;

    uint64_t top = hi - 1u;
    uint32_t bound = top >= (uint64_t)BASE_LIMIT * BASE_LIMIT ? BASE_LIMIT : (uint32_t)isqrt_u64(top);
    ensure_base_primes(bound < 3u ? 3u : bound);
    uint32_t nb = 0;
    while (nb < base_count && base_primes[nb] <= bound) nb++;

    uint64_t seg_lo = start & ~(uint64_t)1; /* bit j <-> seg_lo + 2j + 1 */
    uint32_t active = 0;
    while (seg_lo < hi) {
        uint64_t span = hi - seg_lo;
        uint64_t seg_hi = span > SEG_SPAN ? seg_lo + SEG_SPAN : hi;
        uint32_t nbits = (uint32_t)((seg_hi - seg_lo) / 2u);
        uint32_t nwords = (nbits + 63u) / 64u;
        memset(segment, 0, (size_t)nwords * 8u);

        while (active < nb) {
            uint64_t p = base_primes[active];
            if (p * p >= seg_hi) break;
            uint64_t first = p * p;
            if (first < seg_lo + 1u) {
                first = ((seg_lo + p) / p) * p; /* smallest multiple >= seg_lo + 1 */
                if (!(first & 1u)) first += p;
            }
            next_bit[active] = (uint32_t)((first - seg_lo - 1u) / 2u);
            active++;
        }
        uint32_t nbytes = (nbits + 7u) / 8u;
        for (uint32_t i = 0; i < active; i++) {
            uint32_t p = base_primes[i];
            uint32_t j = next_bit[i];
            if (p < SMALL_PRIME && j < nbits) {
                /* Bits j + r*p (r = 0..7) fall on 8 distinct bit positions, and bit j + 8p is
                 * the same bit p bytes further on: 8 byte-stride loops, no shifts inside. May
                 * touch bits past nbits in the last byte; the count masks them off. */
                for (uint32_t r = 0, jr = j; r < 8u; r++, jr += p) {
                    uint8_t mask = (uint8_t)(1u << (jr & 7u));
                    for (uint32_t b = jr >> 3; b < nbytes; b += p) segment[b] |= mask;
                }
                j += ((nbits - j + p - 1u) / p) * p;
            } else {
                for (; j < nbits; j += p) segment[j >> 3] |= (uint8_t)(1u << (j & 7u));
            }
            next_bit[i] = j - nbits;
        }

        uint64_t marked = 0;
        for (uint32_t w = 0; w < nwords; w++) {
            uint64_t word;
            memcpy(&word, segment + 8u * w, 8);
            if (w == nwords - 1u && (nbits & 63u)) word &= (1ull << (nbits & 63u)) - 1u;
            marked += (uint64_t)__builtin_popcountll(word);
        }
        count += nbits - marked;

        if (seg_hi > MR_FROM) {
            for (uint32_t w = 0; w < nwords; w++) {
                uint64_t word;
                memcpy(&word, segment + 8u * w, 8);
                uint64_t free_bits = ~word;
                if (w == nwords - 1u && (nbits & 63u)) free_bits &= (1ull << (nbits & 63u)) - 1u;
                while (free_bits) {
                    uint32_t b = (uint32_t)__builtin_ctzll(free_bits);
                    free_bits &= free_bits - 1u;
                    uint64_t x = seg_lo + 2u * (64u * (uint64_t)w + b) + 1u;
                    if (x >= MR_FROM && !is_prime_mr(x)) count--;
                }
            }
        }
        seg_lo = seg_hi;
    }
    return count;
}

static int32_t kernel_run(const ccgsc_task *task, uint8_t *out) {
    if (task->n_params != 0) return CCGSC_ERR_BAD_INPUT;
    ccgsc_store_u64(out, count_primes(task->lo, task->hi));
    return 8;
}
