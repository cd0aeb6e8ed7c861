// Host test of kernels/cuda/sparse24_meta.cuh against the canonical layout (docs/FORMAT.md).
#include <cstdio>
#include <cstdlib>

#include "sparse24_meta.cuh"
#include "host_check.h"

int main() {
  // Exactly the 6 pairs i0 < i1 are valid nibbles.
  int valid = 0;
  for (uint32_t nib = 0; nib < 16; ++nib) valid += sparsedm::meta_nibble_valid(nib) ? 1 : 0;
  EXPECT(valid == 6);

  // Every pair of valid groups round-trips through a byte, even group in the low nibble.
  for (uint32_t a0 = 0; a0 < 4; ++a0)
    for (uint32_t a1 = a0 + 1; a1 < 4; ++a1)
      for (uint32_t b0 = 0; b0 < 4; ++b0)
        for (uint32_t b1 = b0 + 1; b1 < 4; ++b1) {
          const uint32_t byte = sparsedm::meta_byte(sparsedm::meta_nibble(a0, a1), sparsedm::meta_nibble(b0, b1));
          EXPECT(byte < 256);
          EXPECT(sparsedm::meta_index(byte, 0, 0) == static_cast<int>(a0));
          EXPECT(sparsedm::meta_index(byte, 0, 1) == static_cast<int>(a1));
          EXPECT(sparsedm::meta_index(byte, 1, 0) == static_cast<int>(b0));
          EXPECT(sparsedm::meta_index(byte, 1, 1) == static_cast<int>(b1));
          EXPECT((byte & 0xFu) == (a0 | (a1 << 2)));
        }

  // The worked example of docs/FORMAT.md: groups kept (1,3), (0,1) -> byte 0x4D.
  EXPECT(sparsedm::meta_byte(sparsedm::meta_nibble(1, 3), sparsedm::meta_nibble(0, 1)) == 0x4Du);

  return host_check::finish("sparse24_meta");
}
