/* Philox4x32-10 and the keyed draws built on it (see rng.h). */
#include "rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static void mulhilo32(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t product = (uint64_t)a * b;
    *hi = (uint32_t)(product >> 32);
    *lo = (uint32_t)product;
}

void rng_philox(uint64_t key, const uint32_t counter[4], uint32_t out[4])
{
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo32(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo32(PHILOX_M1, c2, &hi1, &lo1);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

uint32_t rng_name_stream(const char *name)
{
    uint32_t hash = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        hash ^= *p;
        hash *= 16777619u;
    }
    return hash;
}

static void draw(uint64_t seed, uint32_t purpose, uint32_t stream, uint64_t index,
                 uint32_t out[4])
{
    uint32_t counter[4] = {(uint32_t)index, (uint32_t)(index >> 32), stream, purpose};
    rng_philox(seed, counter, out);
}

uint64_t rng_bits(uint64_t seed, uint32_t purpose, uint32_t stream, uint64_t index)
{
    uint32_t words[4];
    draw(seed, purpose, stream, index, words);
    return ((uint64_t)words[0] << 32) | words[1];
}

/* 53 random bits mapped to (0, 1): adding half a unit keeps 0 out. */
static double to_unit(uint32_t hi, uint32_t lo)
{
    uint64_t bits = (((uint64_t)hi << 32) | lo) >> 11;
    return ((double)bits + 0.5) * (1.0 / 9007199254740992.0);
}

double rng_uniform(uint64_t seed, uint32_t purpose, uint32_t stream, uint64_t index)
{
    uint32_t words[4];
    draw(seed, purpose, stream, index, words);
    return to_unit(words[0], words[1]);
}

double rng_normal(uint64_t seed, uint32_t purpose, uint32_t stream, uint64_t index)
{
    uint32_t words[4];
    draw(seed, purpose, stream, index, words);
    double u1 = to_unit(words[0], words[1]);
    double u2 = to_unit(words[2], words[3]);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
