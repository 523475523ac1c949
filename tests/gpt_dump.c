/*
 * gpt_dump: runs one forward and backward pass of a freshly initialised model
 * on a given batch and writes everything the PyTorch comparison needs
 * (tests/test_model_torch.py).
 *
 *   gpt_dump VOCAB LAYERS HEADS DIM SEQ_LEN BATCH SEED BATCH_FILE OUT_PREFIX [bf16]
 *
 * BATCH_FILE: int32 inputs[B*T] then int32 targets[B*T].
 * Writes OUT_PREFIX.bin: float32 loss, logits[B*T*V], params[P], grads[P]
 * (gradients of the mean loss), and OUT_PREFIX.json: the tensor table
 * (name, shape, offset) that gives params and grads their names.
 * bf16: the model's products in bf16 (--precision bf16, device_bf16()).
 */
#include "gpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *message)
{
    fprintf(stderr, "gpt_dump: %s\n", message);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 10 && !(argc == 11 && strcmp(argv[10], "bf16") == 0))
        return fail("usage: gpt_dump VOCAB LAYERS HEADS DIM SEQ_LEN BATCH SEED BATCH_FILE OUT "
                    "[bf16]");
    GPTConfig config = {atoi(argv[1]), atoi(argv[2]), atoi(argv[3]), atoi(argv[4]),
                        atoi(argv[5])};
    int B = atoi(argv[6]), T = config.seq_len;
    char err[256];
    if (gpt_config_check(&config, err, sizeof(err)) != 0)
        return fail(err);

    const Device *dev = argc == 11 ? device_bf16(device_cpu(), err, sizeof(err)) : device_cpu();
    if (!dev)
        return fail(err);
    GPT gpt;
    Activations acts;
    Scratch scratch;
    if (gpt_init_full(&gpt, dev, &config) || acts_init(&acts, &gpt, B, T) ||
        scratch_init(&scratch, &gpt, B, T))
        return fail("out of memory");
    gpt_init_params(&gpt, strtoull(argv[7], NULL, 10));

    FILE *in = fopen(argv[8], "rb");
    size_t n = (size_t)B * T;
    if (!in || fread(acts.tokens, sizeof(int), n, in) != n ||
        fread(acts.targets, sizeof(int), n, in) != n)
        return fail("cannot read the batch file");
    fclose(in);

    float loss = (float)gpt_forward(&gpt, &acts);
    // logits are kept by the forward pass; the backward pass reuses probs only
    gpt_zero_grad(&gpt);
    gpt_backward(&gpt, &acts, &scratch, 1.0f / (float)n);

    char path[1024];
    snprintf(path, sizeof(path), "%s.bin", argv[9]);
    FILE *out = fopen(path, "wb");
    fwrite(&loss, sizeof(float), 1, out);
    fwrite(acts.logits, sizeof(float), n * config.vocab, out);
    fwrite(gpt.params, sizeof(float), gpt.param_count, out);
    fwrite(gpt.grads, sizeof(float), gpt.param_count, out);
    fclose(out);
    snprintf(path, sizeof(path), "%s.json", argv[9]);
    FILE *manifest = fopen(path, "w");
    gpt_write_manifest(&gpt, manifest);
    fclose(manifest);

    scratch_free(&scratch);
    acts_free(&acts);
    gpt_free(&gpt);
    return 0;
}
