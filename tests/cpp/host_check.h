// Shared by the host tests: EXPECT counts a failed check (file, line, condition on stderr) and
// lets the test go on; finish() reports the count and gives the exit status ctest reads.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace host_check {
inline int failures = 0;

inline int finish(const char* name) {
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("%s: all checks passed\n", name);
  return EXIT_SUCCESS;
}
}  // namespace host_check

#define EXPECT(cond)                                                          \
  do {                                                                        \
    if (!(cond)) {                                                            \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
      ++host_check::failures;                                                 \
    }                                                                         \
  } while (0)
