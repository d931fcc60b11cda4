# Cross-compile for linux-aarch64 with Debian's g++-aarch64-linux-gnu:
#   cmake -S export/runner -B build/runner-aarch64 \
#     -DCMAKE_TOOLCHAIN_FILE=export/runner/cmake/aarch64-linux-gnu.cmake \
#     -DEXECUTORCH_ROOT=<unpacked executorch-1.5.1-...-manylinux_2_28_aarch64.whl>/executorch
# Run on x86-64 with: qemu-aarch64 -L /usr/aarch64-linux-gnu build/runner-aarch64/asrq-runner ...
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
