/*
 * rng: counter-based random numbers (Philox4x32-10, Salmon et al. SC'11, the
 * generator cuRAND and PyTorch use for the same reason).
 *
 * Every draw is a pure function of (seed, purpose, stream, index): there is no
 * state to carry, split or checkpoint, so a draw is the same in every layout
 * and on every rank that asks for it (DESIGN.md, "Randomness is keyed").
 *   seed     the run's --seed
 *   purpose  what the number is for (RNG_INIT, RNG_SHUFFLE, ...)
 *   stream   which object: a parameter's name hash, an epoch, a layer
 *   index    which element of it
 */
#ifndef PHALANX_RNG_H
#define PHALANX_RNG_H

#include <stdint.h>

enum { RNG_INIT = 1, RNG_SHUFFLE = 2, RNG_DROPOUT = 3, RNG_SAMPLE = 4 };

/* Four 32-bit words from Philox4x32-10 with the given key and counter. */
void rng_philox(uint64_t key, const uint32_t counter[4], uint32_t out[4]);

/* FNV-1a hash of a name: the stream id of a named object (a parameter). */
uint32_t rng_name_stream(const char *name);

/* 64 uniformly random bits. */
uint64_t rng_bits(uint64_t seed, uint32_t purpose, uint32_t stream, uint64_t index);

/* Uniform in (0, 1): never 0, so log() of it is finite. */
double rng_uniform(uint64_t seed, uint32_t purpose, uint32_t stream, uint64_t index);

/* Standard normal (Box-Muller on two uniforms of the same counter). */
double rng_normal(uint64_t seed, uint32_t purpose, uint32_t stream, uint64_t index);

#endif
