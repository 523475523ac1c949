/* The token and position embeddings (contract in cuda_kernels.h). */
/* cub first: common.cuh defines WARP, a name cub uses. */
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

// ----------------------------------------------------------------------------
// embeddings

__global__ void encoder_forward_kernel(float *out, const int *tokens, const float *wte,
                                       const float *wpe, int T, int C, int pos_offset, size_t count)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= count)
        return;
    size_t n = i / C;
    int c = (int)(i % C);
    out[i] = wte[(size_t)tokens[n] * C + c] + wpe[(size_t)(pos_offset + (int)(n % T)) * C + c];
}

extern "C" int cuda_encoder_forward(CudaContext *ctx, float *out, const int *tokens,
                                    const float *wte, const float *wpe, int B, int T, int C,
                                    int pos_offset)
{
    size_t count = (size_t)B * T * C;
    encoder_forward_kernel<<<grid_for(count, THREADS), THREADS, 0, ctx->compute>>>(
        out, tokens, wte, wpe, T, C, pos_offset, count);
    return launched(ctx, "encoder_forward");
}

/* dwpe row t gets the batch's rows t, b = 0, 1, ... in order: the CPU's sum. */
__global__ void wpe_backward_kernel(float *dwpe, const float *dout, int B, int T, int C,
                                    int pos_offset)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)T * C)
        return;
    size_t t = i / C, c = i % C;
    float *d = dwpe + (pos_offset + t) * C + c;
    float acc = *d;
    for (int b = 0; b < B; b++)
        acc += dout[((size_t)b * T + t) * C + c];
    *d = acc;
}

/* One block per run of equal tokens in the sorted list (the block at the
 * run's first entry does the work): the rows of that token, ascending (the
 * sort is stable), are added into its row of dwte, as the CPU does. */
__global__ void wte_backward_kernel(float *dwte, const float *dout, const int *sorted_tokens,
                                    const int *sorted_rows, int N, int C)
{
    int first = blockIdx.x, token = sorted_tokens[first];
    if (first > 0 && sorted_tokens[first - 1] == token)
        return;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float *d = dwte + (size_t)token * C + c;
        float acc = *d;
        for (int j = first; j < N && sorted_tokens[j] == token; j++)
            acc += dout[(size_t)sorted_rows[j] * C + c];
        *d = acc;
    }
}

/* Sorts (token, row) pairs by token so that each row of dwte is summed by one
 * block in a fixed order: atomics would make the sum's order, and its bits,
 * change from run to run. */
static int sort_tokens(CudaContext *ctx, const int *tokens, int N, int **sorted_tokens,
                       int **sorted_rows)
{
    const char *what = "encoder_backward: sorting tokens";
    const int *rows = iota(ctx, (size_t)N, what);
    int *sorted = (int *)scratch_get(ctx, SCRATCH_SORTED, 2 * (size_t)N * sizeof(int), NULL, what);
    if (!rows || !sorted)
        return -1;
    *sorted_tokens = sorted;
    *sorted_rows = sorted + N;
    size_t temp_bytes = 0;
    if (cuda_check(ctx,
                   cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, tokens, *sorted_tokens,
                                                   rows, *sorted_rows, N, 0, 32, ctx->compute),
                   what))
        return -1;
    void *temp = scratch_get(ctx, SCRATCH_SORT_TEMP, temp_bytes, NULL, what);
    if (!temp)
        return -1;
    return cuda_check(ctx,
                      cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tokens, *sorted_tokens,
                                                      rows, *sorted_rows, N, 0, 32, ctx->compute),
                      what);
}

extern "C" int cuda_encoder_backward(CudaContext *ctx, float *dwte, float *dwpe, const float *dout,
                                     const int *tokens, int B, int T, int C, int pos_offset)
{
    const char *what = "encoder_backward";
    int N = B * T, *sorted_tokens, *sorted_rows;
    if (N == 0)
        return 0;
    wpe_backward_kernel<<<grid_for((size_t)T * C, THREADS), THREADS, 0, ctx->compute>>>(
        dwpe, dout, B, T, C, pos_offset);
    if (launched(ctx, what) || sort_tokens(ctx, tokens, N, &sorted_tokens, &sorted_rows))
        return -1;
    wte_backward_kernel<<<N, THREADS, 0, ctx->compute>>>(dwte, dout, sorted_tokens, sorted_rows, N,
                                                         C);
    return launched(ctx, what);
}
