// The part of llama.cpp's tools/quantize that runs without an importance matrix:
// llama_model_quantize (libllama, the function llama-quantize calls) with its default
// parameters and the given file type. For when building all of llama.cpp's tools is too slow
// (libllama alone is enough):
//   g++ -O2 -std=c++17 llama_quantize_min.cpp -I $LLAMA/include -I $LLAMA/ggml/include \
//       -L $LLAMA/build/bin -lllama -lggml -lggml-base -Wl,-rpath,$LLAMA/build/bin \
//       -o $LLAMA/build/bin/llama-quantize
#include "llama.h"
#include <cstdio>
#include <cstring>
#include <string>
int main(int argc, char ** argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s in.gguf out.gguf Q4_K_M|Q5_K_M|Q6_K\n", argv[0]); return 2; }
    llama_backend_init();
    llama_model_quantize_params params = llama_model_quantize_default_params();
    std::string t = argv[3];
    params.ftype = t == "Q4_K_M" ? LLAMA_FTYPE_MOSTLY_Q4_K_M : t == "Q5_K_M" ? LLAMA_FTYPE_MOSTLY_Q5_K_M : LLAMA_FTYPE_MOSTLY_Q6_K;
    uint32_t rc = llama_model_quantize(argv[1], argv[2], &params);
    llama_backend_free();
    return rc ? 1 : 0;
}
