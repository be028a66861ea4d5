/* A stand-in for NVIDIA's driver library (libcuda.so.1) that loads every kernel as the real
 * one does and runs none: for a machine without a GPU, to find before a GPU session what
 * would fail at compile or load time there (tools/cuda-dry-run.sh builds and uses it).
 *
 * It reports an H200 (compute capability 9.0, 132 SMs, 227 KB of shared memory a block,
 * 141 GB of memory, or DRY_CUDA_MEMORY_MB: allocations past it fail as out of memory), one
 * of them or DRY_CUDA_DEVICES; the device a context is made on is logged.
 * Device memory is host memory (mapped without reserve, so a pool of gigabytes costs only
 * what is touched), so copies work and kernels' outputs stay as they were. Each module's PTX
 * goes through ptxas for sm_90a, as the real driver's JIT compiles it, when DRY_CUDA_PTXAS
 * names ptxas: a module ptxas refuses fails to load, as on the card. Each launch is checked
 * against the card's limits (threads a block, grid, dynamic shared memory as its function's
 * attribute allows) and logged to DRY_CUDA_LOG, one line per launch; so is each module.
 * Events measure host time, so an autotuner's timings are real numbers of no meaning.
 * Streams are numbered as they are made (the default stream is 0); each launch and
 * asynchronous copy is logged with its stream, and each wait of a stream for another's event
 * with both, so a log shows which work overlaps on a card and where streams are ordered.
 * It has the functions cubecl-cuda, cudarc and NVRTC call (NVRTC asks for the driver's private
 * tables): a path that calls another stops at it, cudarc naming the missing symbol.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <pthread.h>

typedef int CUresult;
typedef int CUdevice;
typedef uint64_t CUdeviceptr;
typedef void *CUcontext, *CUstream, *CUmodule;

enum {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    INVALID_PTX = 218,
    NOT_FOUND = 500,
    LAUNCH_OUT_OF_RESOURCES = 701,
};

/* An H200's memory, as nvidia-smi reports it, or DRY_CUDA_MEMORY_MB: a card that runs out. */
static long long total_memory(void) {
    const char *megabytes = getenv("DRY_CUDA_MEMORY_MB");
    return (megabytes ? atoll(megabytes) : 143771ll) << 20;
}
static const int MAX_DYNAMIC_SHARED = 232448;     /* sm_90's opt-in a block */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *log_file;
static int module_count, launch_count;
static long long device_bytes; /* what device allocations hold now */

static void say(const char *format, ...) {
    pthread_mutex_lock(&lock);
    if (!log_file) {
        const char *path = getenv("DRY_CUDA_LOG");
        log_file = path ? fopen(path, "a") : stderr;
        if (!log_file) log_file = stderr;
    }
    va_list args;
    va_start(args, format);
    vfprintf(log_file, format, args);
    va_end(args);
    fflush(log_file);
    pthread_mutex_unlock(&lock);
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* ---- device and context ---- */

CUresult cuInit(unsigned flags) { (void)flags; return SUCCESS; }
/* NVRTC asks the driver for its private tables when one is loaded; without them it compiles
 * as it does on a machine with no driver. */
CUresult cuGetExportTable(const void **table, const void *id) {
    (void)id;
    *table = NULL;
    return NOT_FOUND;
}
CUresult cuDriverGetVersion(int *version) { *version = 13000; return SUCCESS; }
static int device_count(void) {
    const char *devices = getenv("DRY_CUDA_DEVICES");
    return devices ? atoi(devices) : 1;
}
CUresult cuDeviceGetCount(int *count) { *count = device_count(); return SUCCESS; }
CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    *device = ordinal;
    return ordinal >= 0 && ordinal < device_count() ? SUCCESS : INVALID_VALUE;
}
CUresult cuDeviceGetName(char *name, int length, CUdevice device) {
    (void)device;
    snprintf(name, length, "NVIDIA H200 (dry run: no kernel runs)");
    return SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice device) {
    (void)device;
    *bytes = total_memory();
    return SUCCESS;
}
CUresult cuDeviceGetPCIBusId(char *id, int length, CUdevice device) {
    (void)device;
    snprintf(id, length, "0000:00:00.0");
    return SUCCESS;
}

CUresult cuDeviceGetAttribute(int *value, int attribute, CUdevice device) {
    (void)device;
    switch (attribute) {
    case 1: *value = 1024; break;           /* threads a block */
    case 2: case 3: *value = 1024; break;   /* block x, y */
    case 4: *value = 64; break;             /* block z */
    case 5: *value = 2147483647; break;     /* grid x */
    case 6: case 7: *value = 65535; break;  /* grid y, z */
    case 8: *value = 49152; break;          /* static shared memory a block */
    case 10: *value = 32; break;            /* warp */
    case 12: case 82: *value = 65536; break;
    case 13: *value = 1980000; break;
    case 16: *value = 132; break;           /* SMs */
    case 36: *value = 2619000; break;
    case 37: *value = 6144; break;
    case 38: *value = 50 << 20; break;      /* L2 */
    case 39: *value = 2048; break;
    case 40: *value = 3; break;
    case 41: case 31: case 89: case 115: *value = 1; break;
    case 75: *value = 9; break;             /* compute capability 9.0 */
    case 76: *value = 0; break;
    case 81: *value = 233472; break;        /* shared memory an SM */
    case 97: *value = MAX_DYNAMIC_SHARED; break;
    case 111: *value = 1024; break;
    default: *value = 0; break;
    }
    return SUCCESS;
}

static int context_token;
CUresult cuDevicePrimaryCtxRetain(CUcontext *context, CUdevice device) {
    say("context on device %d\n", device);
    *context = &context_token;
    return SUCCESS;
}
CUresult cuCtxSetCurrent(CUcontext context) { (void)context; return SUCCESS; }
CUresult cuCtxGetStreamPriorityRange(int *least, int *greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return SUCCESS;
}
CUresult cuGetErrorString(CUresult error, const char **text) {
    static char buffer[64];
    snprintf(buffer, sizeof buffer, "dry-run driver error %d", error);
    *text = buffer;
    return SUCCESS;
}
CUresult cuGetErrorName(CUresult error, const char **text) { return cuGetErrorString(error, text); }

/* ---- streams and events: everything completes at once ---- */

static int stream_count;
/* A stream's number: the order it was made in, from 1; the default stream (NULL) is 0. */
static int stream_number(CUstream stream) { return stream ? *(int *)stream : 0; }

CUresult cuStreamCreate(CUstream *stream, unsigned flags) {
    (void)flags;
    int *number = malloc(sizeof *number);
    pthread_mutex_lock(&lock);
    *number = ++stream_count;
    pthread_mutex_unlock(&lock);
    say("stream %d made\n", *number);
    *stream = number;
    return SUCCESS;
}
CUresult cuStreamCreateWithPriority(CUstream *stream, unsigned flags, int priority) {
    (void)priority;
    return cuStreamCreate(stream, flags);
}
CUresult cuStreamDestroy_v2(CUstream stream) { free(stream); return SUCCESS; }
CUresult cuStreamSynchronize(CUstream stream) { (void)stream; return SUCCESS; }
/* An event: when it was recorded (host time) and on which stream. */
typedef struct {
    double ms;
    int stream;
} Event;

CUresult cuStreamWaitEvent(CUstream stream, void *event, unsigned flags) {
    (void)flags;
    say("wait: stream %d for an event of stream %d\n", stream_number(stream),
        ((Event *)event)->stream);
    return SUCCESS;
}

CUresult cuEventCreate(void **event, unsigned flags) {
    (void)flags;
    *event = calloc(1, sizeof(Event));
    return SUCCESS;
}
CUresult cuEventRecord(void *event, CUstream stream) {
    Event *recorded = event;
    recorded->ms = now_ms();
    recorded->stream = stream_number(stream);
    return SUCCESS;
}
CUresult cuEventSynchronize(void *event) { (void)event; return SUCCESS; }
CUresult cuEventElapsedTime(float *ms, void *start, void *end) {
    *ms = (float)(((Event *)end)->ms - ((Event *)start)->ms);
    return SUCCESS;
}
CUresult cuEventElapsedTime_v2(float *ms, void *start, void *end) { return cuEventElapsedTime(ms, start, end); }
CUresult cuEventDestroy_v2(void *event) { free(event); return SUCCESS; }

/* ---- memory: host pages, device pointer = host pointer ---- */

/* Each mapping's length sits in the 64 bytes before the pointer handed out. */
static CUresult map(void **pointer, size_t bytes) {
    size_t total = bytes + 64;
    char *base = mmap(NULL, total, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return OUT_OF_MEMORY;
    *(size_t *)base = total;
    *pointer = base + 64;
    return SUCCESS;
}
static CUresult unmap(void *pointer) {
    if (!pointer) return SUCCESS;
    char *base = (char *)pointer - 64;
    munmap(base, *(size_t *)base);
    return SUCCESS;
}

/* Device memory, counted against the card's. */
static CUresult allocate(CUdeviceptr *pointer, size_t bytes) {
    pthread_mutex_lock(&lock);
    long long held = device_bytes;
    int fits = held + (long long)bytes <= total_memory();
    if (fits) device_bytes += bytes;
    pthread_mutex_unlock(&lock);
    if (!fits) {
        say("out of memory: %zu bytes asked, %lld held of %lld\n", bytes, held, total_memory());
        return OUT_OF_MEMORY;
    }
    return map((void **)pointer, bytes);
}
static CUresult release(CUdeviceptr pointer) {
    if (!pointer) return SUCCESS;
    pthread_mutex_lock(&lock);
    device_bytes -= *(size_t *)((char *)pointer - 64) - 64;
    pthread_mutex_unlock(&lock);
    return unmap((void *)pointer);
}
CUresult cuMemAlloc_v2(CUdeviceptr *pointer, size_t bytes) { return allocate(pointer, bytes); }
CUresult cuMemAllocAsync(CUdeviceptr *pointer, size_t bytes, CUstream stream) {
    (void)stream;
    return allocate(pointer, bytes);
}
CUresult cuMemFree_v2(CUdeviceptr pointer) { return release(pointer); }
CUresult cuMemFreeAsync(CUdeviceptr pointer, CUstream stream) {
    (void)stream;
    return release(pointer);
}
CUresult cuMemAllocHost_v2(void **pointer, size_t bytes) { return map(pointer, bytes); }
CUresult cuMemFreeHost(void *pointer) { return unmap(pointer); }

CUresult cuMemcpyHtoD_v2(CUdeviceptr to, const void *from, size_t bytes) {
    memcpy((void *)to, from, bytes);
    return SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr to, const void *from, size_t bytes, CUstream stream) {
    say("copy to the device: %zu bytes on stream %d\n", bytes, stream_number(stream));
    return cuMemcpyHtoD_v2(to, from, bytes);
}
CUresult cuMemcpyDtoH_v2(void *to, CUdeviceptr from, size_t bytes) {
    memcpy(to, (const void *)from, bytes);
    return SUCCESS;
}
CUresult cuMemcpyDtoHAsync_v2(void *to, CUdeviceptr from, size_t bytes, CUstream stream) {
    say("copy to the host: %zu bytes on stream %d\n", bytes, stream_number(stream));
    return cuMemcpyDtoH_v2(to, from, bytes);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr to, CUdeviceptr from, size_t bytes, CUstream stream) {
    (void)stream;
    memmove((void *)to, (const void *)from, bytes);
    return SUCCESS;
}

/* CUDA_MEMCPY2D's fields, in the driver header's order. */
typedef struct {
    size_t srcXInBytes, srcY;
    int srcMemoryType;
    const void *srcHost;
    CUdeviceptr srcDevice;
    void *srcArray;
    size_t srcPitch;
    size_t dstXInBytes, dstY;
    int dstMemoryType;
    void *dstHost;
    CUdeviceptr dstDevice;
    void *dstArray;
    size_t dstPitch;
    size_t WidthInBytes, Height;
} Copy2d;

static const char *copy_source(const Copy2d *copy) {
    /* Memory type 1 is host, 2 device, 4 unified: all of them host addresses here. */
    return copy->srcMemoryType == 1 ? (const char *)copy->srcHost : (const char *)copy->srcDevice;
}
static char *copy_destination(const Copy2d *copy) {
    return copy->dstMemoryType == 1 ? (char *)copy->dstHost : (char *)copy->dstDevice;
}
CUresult cuMemcpy2DAsync_v2(const Copy2d *copy, CUstream stream) {
    say("copy (2D) to the %s: %zu bytes on stream %d\n", copy->dstMemoryType == 1 ? "host" : "device",
        copy->WidthInBytes * copy->Height, stream_number(stream));
    const char *from = copy_source(copy) + copy->srcY * copy->srcPitch + copy->srcXInBytes;
    char *to = copy_destination(copy) + copy->dstY * copy->dstPitch + copy->dstXInBytes;
    for (size_t row = 0; row < copy->Height; row++)
        memmove(to + row * copy->dstPitch, from + row * copy->srcPitch, copy->WidthInBytes);
    return SUCCESS;
}

/* ---- modules and functions ---- */

typedef struct {
    int number;
    char *ptx;
} Module;

typedef struct {
    char name[512];
    int module;
    int max_dynamic_shared;
} Function;

/* Runs ptxas over the module's PTX, as the driver's JIT would; 0 where it assembles. */
static int assemble(int module, const char *ptx) {
    const char *ptxas = getenv("DRY_CUDA_PTXAS");
    const char *folder = getenv("DRY_CUDA_PTX_DIR");
    if (!ptxas || !folder) return 0;
    char path[4096], command[12288];
    snprintf(path, sizeof path, "%s/module-%05d.ptx", folder, module);
    FILE *file = fopen(path, "w");
    if (!file) return 0;
    fputs(ptx, file);
    fclose(file);
    snprintf(command, sizeof command,
             "'%s' -arch=sm_90a -v -o /dev/null '%s' > '%s.ptxas' 2>&1", ptxas, path, path);
    double start = now_ms();
    int status = system(command);
    say("module %d ptxas %.0f ms%s\n", module, now_ms() - start,
        status == 0 ? "" : " FAILED (see the .ptxas file beside its PTX)");
    return status == 0 ? 0 : 1;
}

CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    pthread_mutex_lock(&lock);
    int number = ++module_count;
    pthread_mutex_unlock(&lock);
    if (assemble(number, (const char *)image)) return INVALID_PTX;
    Module *loaded = malloc(sizeof *loaded);
    loaded->number = number;
    loaded->ptx = strdup((const char *)image);
    *module = loaded;
    return SUCCESS;
}
CUresult cuModuleUnload(CUmodule module) {
    Module *loaded = module;
    free(loaded->ptx);
    free(loaded);
    return SUCCESS;
}
CUresult cuModuleGetFunction(void **function, CUmodule module, const char *name) {
    Module *loaded = module;
    if (!strstr(loaded->ptx, name)) return NOT_FOUND;
    Function *f = calloc(1, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    f->module = loaded->number;
    f->max_dynamic_shared = 49152; /* the driver's default until the attribute raises it */
    *function = f;
    return SUCCESS;
}
CUresult cuFuncSetAttribute(void *function, int attribute, int value) {
    Function *f = function;
    if (attribute == 8 /* CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES */) {
        if (value < 0 || value > MAX_DYNAMIC_SHARED) {
            say("refused: %s asks for %d bytes of dynamic shared memory (at most %d)\n",
                f->name, value, MAX_DYNAMIC_SHARED);
            return INVALID_VALUE;
        }
        f->max_dynamic_shared = value;
    }
    return SUCCESS;
}

/* Why the card would refuse a launch, or NULL; `error` is the driver's code for it. */
static const char *launch_refusal(const Function *f, unsigned gx, unsigned gy, unsigned gz,
                                  unsigned bx, unsigned by, unsigned bz, unsigned shared,
                                  CUresult *error) {
    *error = INVALID_VALUE;
    if (!gx || !gy || !gz || !bx || !by || !bz) return "an empty grid or block";
    if (gy > 65535 || gz > 65535) return "a grid past 65535 in y or z";
    if (bz > 64) return "a block past 64 in z";
    *error = LAUNCH_OUT_OF_RESOURCES;
    if ((unsigned long long)bx * by * bz > 1024) return "more than 1024 threads a block";
    if ((int)shared > f->max_dynamic_shared)
        return "more dynamic shared memory than its attribute allows";
    return NULL;
}

CUresult cuLaunchKernel(void *function, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, CUstream stream,
                        void **parameters, void **extra) {
    (void)parameters; (void)extra;
    Function *f = function;
    CUresult error;
    const char *why = launch_refusal(f, gx, gy, gz, bx, by, bz, shared, &error);
    pthread_mutex_lock(&lock);
    int number = ++launch_count;
    pthread_mutex_unlock(&lock);
    say("launch %d %s module %d grid %u,%u,%u block %u,%u,%u shared %u stream %d%s%s\n", number,
        f->name, f->module, gx, gy, gz, bx, by, bz, shared, stream_number(stream),
        why ? " REFUSED: " : "", why ? why : "");
    return why ? error : SUCCESS;
}

/* ---- tensor maps (TMA): accepted, their bytes zero ---- */

CUresult cuTensorMapEncodeTiled(void *map, ...) { memset(map, 0, 128); return SUCCESS; }
CUresult cuTensorMapEncodeIm2col(void *map, ...) { memset(map, 0, 128); return SUCCESS; }
CUresult cuTensorMapEncodeIm2colWide(void *map, ...) { memset(map, 0, 128); return SUCCESS; }
