/* Test vectors for ft_export.kquants and gguf-py's quantizers, made with llama.cpp's own
 * reference quantizers (ggml/src/ggml-quants.c, the code llama-quantize runs without an
 * importance matrix).
 *
 * Reads N float32 values (raw, little-endian) from argv[1]; writes, for each type, the
 * quantized bytes of the same values to argv[2]/<type>.bin. Built against the ggml of the
 * llama-cpp-python 0.3.36 source distribution (vendor/llama.cpp), x86-64, gcc, -O3:
 *
 *   gcc -O3 -std=gnu11 -I $LLAMA/ggml/include -I $LLAMA/ggml/src make_quant_vectors.c \
 *       -L $LLAMA/build/bin -lggml-base -Wl,-rpath,$LLAMA/build/bin -o make_quant_vectors
 *
 * tests/make_quant_vectors.py writes the input, runs this and packs everything into
 * tests/data/quant-reference.safetensors.
 */
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
#include "ggml-quants.h"

static void write_file(const char *dir, const char *name, const void *data, size_t size) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) { perror(path); exit(1); }
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s input.f32 outdir\n", argv[0]); return 2; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    size_t n = (size_t)bytes / sizeof(float);
    float *x = malloc(bytes);
    if (fread(x, 1, bytes, f) != (size_t)bytes) { perror("read"); return 1; }
    fclose(f);
    unsigned char *out = malloc(n * 2);
#define RUN(name, fn, type) do { \
        fn(x, (void *)out, (int64_t)n); \
        write_file(argv[2], name, out, ggml_row_size(type, (int64_t)n)); \
    } while (0)
    RUN("q4_K", quantize_row_q4_K_ref, GGML_TYPE_Q4_K);
    RUN("q5_K", quantize_row_q5_K_ref, GGML_TYPE_Q5_K);
    RUN("q6_K", quantize_row_q6_K_ref, GGML_TYPE_Q6_K);
    RUN("q8_0", quantize_row_q8_0_ref, GGML_TYPE_Q8_0);
    RUN("q5_0", quantize_row_q5_0_ref, GGML_TYPE_Q5_0);
    RUN("q5_1", quantize_row_q5_1_ref, GGML_TYPE_Q5_1);
    RUN("q4_0", quantize_row_q4_0_ref, GGML_TYPE_Q4_0);
    RUN("q4_1", quantize_row_q4_1_ref, GGML_TYPE_Q4_1);
    return 0;
}
