/*
 * Native reference driver: compiles a kernel's C source against the host C library and
 * times ccgsc_run on hex-encoded task inputs given on the command line. KERNEL_SOURCE names
 * the kernel file. Prints {"outputs": [hex], "seconds": [per task]} as JSON.
 */
#define CCGSC_HOST_LIBC 1
#include KERNEL_SOURCE

#include <stdio.h>
#include <string.h>
#include <time.h>

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int main(int argc, char **argv) {
    printf("{\"outputs\": [");
    double seconds[256];
    int n = argc - 1 > 256 ? 256 : argc - 1;
    for (int a = 0; a < n; a++) {
        const char *hex = argv[a + 1];
        size_t len = strlen(hex) / 2;
        if (len > sizeof ccgsc_in_buf) return 2;
        for (size_t i = 0; i < len; i++) {
            ccgsc_in_buf[i] = (uint8_t)(hex_value(hex[2 * i]) * 16 + hex_value(hex[2 * i + 1]));
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int32_t rc = ccgsc_run((int32_t)len);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (rc < 0) return 3;
        seconds[a] = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        printf("%s\"", a ? ", " : "");
        for (int32_t i = 0; i < rc; i++) printf("%02x", ccgsc_out_buf[i]);
        printf("\"");
    }
    printf("], \"seconds\": [");
    for (int a = 0; a < n; a++) printf("%s%.9f", a ? ", " : "", seconds[a]);
    printf("]}\n");
    return 0;
}
