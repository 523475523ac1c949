/* The CPU device tables (cpu, cpu-staged) and the choice of backend
 * (contract in device.h). */
#include "device.h"

#include "bf16.h"
#include "kernels.h"

#ifdef HAVE_CUDA
#include "cuda_device.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(void *ctx, size_t bytes)
{
    (void)ctx;
    return calloc(bytes ? bytes : 1, 1);
}

static void cpu_free(void *ctx, void *buffer)
{
    (void)ctx;
    free(buffer);
}

/* Host memory: the model may hand the same buffer in both roles (tokens). */
static void cpu_copy(void *ctx, void *dst, const void *src, size_t bytes)
{
    (void)ctx;
    if (dst != src)
        memcpy(dst, src, bytes);
}

static void cpu_copy_rows(void *ctx, float *dst, size_t dst_pitch, const float *src,
                          size_t src_pitch, size_t width, size_t rows)
{
    (void)ctx;
    for (size_t r = 0; r < rows; r++)
        memcpy(dst + r * dst_pitch, src + r * src_pitch, width * sizeof(float));
}

static void cpu_zero(void *ctx, void *dst, size_t bytes)
{
    (void)ctx;
    memset(dst, 0, bytes);
}

static int cpu_sync(void *ctx)
{
    (void)ctx;
    return 0;
}

static const char *cpu_error(void *ctx)
{
    (void)ctx;
    return "";
}

/* The CPU kernels (kernels.h, optim.h) take no context: one thunk each. */
#define CPU_RETURN_void
#define CPU_RETURN_double return
#define CPU_THUNK(ret, name, params, args)                                                    \
    static ret cpu_##name(void *ctx, KERNEL_UNPAREN params)                                   \
    {                                                                                         \
        (void)ctx;                                                                            \
        CPU_RETURN_##ret name args;                                                           \
    }
#define CPU_THUNK_BF16(ret, name, params, args)                                               \
    static ret cpu_##name##_bf16(void *ctx, KERNEL_UNPAREN params)                            \
    {                                                                                         \
        (void)ctx;                                                                            \
        CPU_RETURN_##ret name##_bf16 args;                                                    \
    }
KERNEL_LIST(CPU_THUNK)
KERNEL_OPTIM(CPU_THUNK)
KERNEL_PRODUCTS(CPU_THUNK_BF16)

#define CPU_ENTRY(ret, name, params, args) .name = cpu_##name,

static const Device cpu_device = {
    .name = "cpu",
    .host_memory = true,
    .staged = false,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .copy_rows = cpu_copy_rows,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .error = cpu_error,
    KERNEL_LIST(CPU_ENTRY) KERNEL_OPTIM(CPU_ENTRY)
};

const Device *device_cpu(void)
{
    return &cpu_device;
}

int device_ready(const Device *dev, char *err, size_t err_len)
{
    if (device_sync(dev) == 0)
        return 0;
    snprintf(err, err_len, "%s device: %s", dev->name, device_error(dev));
    return -1;
}

// ----------------------------------------------------------------------------
// cpu-staged: the same kernels, with the snapshot path of a GPU. The copy is
// synchronous, so there is nothing to wait for.

static void staged_snapshot_copy(void *ctx, void *host_dst, const void *src, size_t bytes)
{
    (void)ctx;
    memcpy(host_dst, src, bytes);
}

static int staged_snapshot_wait(void *ctx, char *err, size_t err_len)
{
    (void)ctx, (void)err, (void)err_len;
    return 0;
}

static void staged_compute_after_snapshot(void *ctx)
{
    (void)ctx;
}

static const Device *cpu_staged_device(void)
{
    static Device staged;
    if (!staged.name) {
        staged = cpu_device;
        staged.name = "cpu-staged";
        staged.staged = true;
        staged.host_alloc = cpu_alloc;
        staged.host_free = cpu_free;
        staged.snapshot_copy = staged_snapshot_copy;
        staged.snapshot_wait = staged_snapshot_wait;
        staged.compute_after_snapshot = staged_compute_after_snapshot;
    }
    return &staged;
}

// ----------------------------------------------------------------------------
// bf16: the same tables with bf16 matrix products (kernels.h)

static void use_bf16_products(Device *table, const Device *fp32, const char *name)
{
    *table = *fp32;
    table->name = name;
#define CPU_USE_BF16(ret, name, params, args) table->name = cpu_##name##_bf16;
    KERNEL_PRODUCTS(CPU_USE_BF16)
#undef CPU_USE_BF16
}

const Device *device_bf16(const Device *fp32, char *err, size_t err_len)
{
    static Device cpu_bf16, staged_bf16;
#ifdef HAVE_CUDA
    if (strcmp(fp32->name, "cuda") == 0)
        return cuda_device_bf16(fp32); // cuBLAS: bf16 on every GPU this build targets (sm_90)
#endif
    bool staged = strcmp(fp32->name, "cpu-staged") == 0;
    if (bf16_open(err, err_len))
        return NULL;
    if (!cpu_bf16.name) {
        use_bf16_products(&cpu_bf16, &cpu_device, "cpu");
        use_bf16_products(&staged_bf16, cpu_staged_device(), "cpu-staged");
    }
    return staged ? &staged_bf16 : &cpu_bf16;
}

bool device_built(const char *name, char *why, size_t why_len)
{
#ifdef HAVE_CUDA
    if (strcmp(name, "cuda") == 0)
        return true;
#endif
    if (strcmp(name, "cpu") == 0 || strcmp(name, "cpu-staged") == 0)
        return true;
    if (strcmp(name, "cuda") == 0)
        snprintf(why, why_len,
                 "--device cuda: this phalanx was built without the CUDA backend (nvcc was not "
                 "found when it was configured); rebuild with `meson setup -Dcuda=enabled` on a "
                 "machine with the CUDA toolkit, or use --device cpu");
    else
        snprintf(why, why_len, "--device %s: unknown device; use cpu or cuda", name);
    return false;
}

const Device *device_open(const char *name, bool tf32, char *err, size_t err_len)
{
    if (!device_built(name, err, err_len))
        return NULL;
    if (strcmp(name, "cpu") == 0)
        return &cpu_device;
    if (strcmp(name, "cpu-staged") == 0)
        return cpu_staged_device();
#ifdef HAVE_CUDA
    return cuda_device_open(tf32, err, err_len);
#else
    (void)tf32;
    return NULL; /* not reached: device_built said no */
#endif
}

void device_close(const Device *device)
{
#ifdef HAVE_CUDA
    if (device && strcmp(device->name, "cuda") == 0)
        cuda_device_close(device);
#else
    (void)device;
#endif
}
