/* The Vulkan context: one instance, one device, one compute queue, the device-memory sub-allocator,
 * the pipeline cache and the command buffers that a batch of work is recorded into.
 *
 * Work is recorded, not executed: ec_batch_begin() opens a command buffer, every op appends its
 * dispatches, ec_batch_submit() submits and waits. Ops called while no batch is open run in a batch of
 * their own. Barriers come from the ranges each dispatch reads and writes (ec_access): one is recorded
 * only where a dispatch touches memory that an earlier one of the batch wrote (or writes memory an
 * earlier one read), and the end of every batch makes its writes visible to the host and to later
 * batches. A long batch may be submitted in pieces (EYECARE_SUBMIT_DISPATCHES; GPUs with a watchdog).
 *
 * EYECARE_EMULATE makes lavapipe take the paths of GPUs this machine does not have (docs/devices.md):
 * discrete-memory, gpu-workgroups, small-limits, split-submits, or all. */
#ifndef EC_VK_CONTEXT_H
#define EC_VK_CONTEXT_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include "vk/vk_loader.h"

#include "errors.h"

typedef struct ec_block ec_block;

/* A piece of device memory handed out by the sub-allocator: `buffer` covers the whole block, the
 * allocation is [offset, offset + size) of it. */
typedef struct {
    ec_block *block;
    VkBuffer buffer;
    VkDeviceSize offset;
    VkDeviceSize size;
    void *mapped; /* host pointer to the allocation when device memory is host-visible, else NULL */
} ec_allocation;

typedef struct {
    const char *name;
    VkPipelineLayout layout;
    VkDescriptorSetLayout set_layout;
    const char *bindings; /* one char per binding: 'S' storage buffer, 'T' uniform texel buffer */
    uint32_t writes;      /* bit i: binding i is a storage buffer the shader may write (from its SPIR-V) */
    int reduces;          /* the shader synchronizes its workgroup (a reduction over several subgroups) */
    uint32_t push_size;
} ec_kernel_layout;

typedef struct ec_pipeline {
    int kernel;                 /* index into the kernel table (ops.c) */
    uint32_t spec[8];           /* specialization constants 0..7 */
    VkPipeline pipeline;
    struct ec_pipeline *next;
} ec_pipeline;

/* EYECARE_EMULATE modes (bits of ec_context.emulate). */
enum {
    EC_EMULATE_DISCRETE_MEMORY = 1, /* tensors in memory the host cannot map: every transfer through staging */
    EC_EMULATE_GPU_WORKGROUPS = 2,  /* a GPU's workgroup widths and grid: reductions span several subgroups */
    EC_EMULATE_SMALL_LIMITS = 4,    /* maxTexelBufferElements 2^20, maxStorageBufferRange 16 MiB: views split */
    EC_EMULATE_SPLIT_SUBMITS = 8,   /* long batches submitted in pieces of a few dispatches */
};

/* What the runtime did, for tests/test_emulation.py and benchmarks: proof that a path really ran. */
typedef struct {
    uint64_t submits;               /* vkQueueSubmit calls (a batch in pieces makes several) */
    uint64_t dispatches;
    uint64_t barriers;              /* pipeline barriers recorded between commands of a batch */
    uint64_t staging_copies;        /* uploads and downloads through the staging buffers */
    uint64_t multi_subgroup_dispatches; /* reductions whose workgroup spans several subgroups */
    uint64_t split_views;           /* texel views of part of a tensor (past maxTexelBufferElements) */
    uint64_t fills;                 /* vkCmdFillBuffer (op_zero) */
} ec_counters;

/* One range of memory a command reads or writes: the barrier tracking's unit. */
typedef struct {
    VkBuffer buffer;
    VkDeviceSize begin, end;
    int write;
    VkPipelineStageFlags stage;     /* COMPUTE_SHADER or TRANSFER */
} ec_access;

typedef struct {
    char name[256];
    char type[16];              /* "discrete", "integrated", "virtual", "cpu", "other" */
    uint32_t vendor_id, device_id, api_version;
    uint64_t memory_bytes;      /* size of the largest device-local heap */
    uint32_t subgroup_size;
    uint32_t max_storage_buffer_range;
    uint32_t max_texel_buffer_elements;
    uint32_t max_shared_memory;
    uint32_t max_workgroup_invocations;
    uint32_t subgroup_operations;   /* VkSubgroupFeatureFlags supported in compute shaders */
    int push_descriptor;        /* VK_KHR_push_descriptor available */
    /* Identity, for matching a Vulkan device to the GPU another API (CUDA, ROCm, a cluster scheduler) names:
     * the deviceUUID (VkPhysicalDeviceIDProperties; equal to the CUDA/nvidia-smi GPU UUID on NVIDIA), and the PCI
     * address where VK_EXT_pci_bus_info is present (has_pci = 0 otherwise, e.g. lavapipe). */
    uint8_t uuid[VK_UUID_SIZE];
    int has_pci;
    uint32_t pci_domain, pci_bus, pci_device, pci_function;
} ec_device_info;

typedef struct ec_context {
    VkInstance instance;
    VkPhysicalDevice physical;
    VkDevice device;
    VkQueue queue;
    uint32_t queue_family;
    ec_device_info info;
    VkPhysicalDeviceLimits limits;
    int validation;             /* the Khronos validation layer is on */
    VkDebugUtilsMessengerEXT messenger;

    unsigned emulate;           /* EC_EMULATE_* bits (EYECARE_EMULATE) */
    int lost;                   /* VK_ERROR_DEVICE_LOST was seen: every later use fails with DeviceError */
    ec_counters counters;

    /* memory: each kind is a set of property flags; the type is chosen per buffer among those its
     * VkMemoryRequirements.memoryTypeBits allow (preferring the flags in *_prefer) */
    VkMemoryPropertyFlags tensor_flags, tensor_prefer;
    VkMemoryPropertyFlags upload_flags, upload_prefer;
    VkMemoryPropertyFlags download_flags, download_prefer;
    int host_visible;           /* tensors are mapped: no staging needed */
    uint32_t memory_type;       /* the type the first tensor block got (for the heap size) */
    ec_block *blocks;
    uint64_t budget;            /* cap on `reserved` (EYECARE_MAX_DEVICE_MEMORY, max_device_memory=); 0 = none */
    uint64_t in_use;            /* bytes of live allocations */
    uint64_t reserved;          /* bytes of device memory held in blocks: what the driver has given eyecare */
    ec_allocation staging_up;   /* host-visible bounce buffers for memory the host cannot map: uploads, */
    ec_allocation staging_down; /* and downloads (host-cached where the device has such a type) */
    int staging_down_coherent;  /* else reads are preceded by vkInvalidateMappedMemoryRanges */

    /* work */
    VkCommandPool command_pool;
    VkCommandBuffer cmd;        /* the command buffer being recorded: cmds[piece] */
    VkCommandBuffer *cmds;      /* one per piece of the open batch */
    uint32_t n_cmds, piece;
    VkFence fence;
    int recording;              /* a batch is open */
    uint32_t dispatches;        /* dispatches recorded in the open batch */
    uint32_t piece_dispatches;  /* ... in its current piece */
    uint32_t submit_every;      /* dispatches per piece (0: the whole batch in one submit) */
    ec_access *pending;         /* accesses since the last barrier */
    uint32_t n_pending, cap_pending;
    int batch_wrote;            /* the open batch has commands (the end-of-batch barrier is needed) */
    VkQueryPool timestamps;
    double last_batch_ms;       /* device time of the last submitted batch, from timestamps */

    VkPipelineCache pipeline_cache;
    ec_kernel_layout *layouts;  /* one per kernel, built on first use */
    ec_pipeline *pipelines;
    PFN_vkCmdPushDescriptorSetKHR push_descriptor_set;

    pthread_mutex_t lock;       /* serializes use of the context across threads */

    uint64_t heap_bytes;        /* size of the heap tensors are allocated from */
    uint64_t max_allocation;    /* largest single allocation the device accepts (heap, maxMemoryAllocationSize,
                                   maxBufferSize), so that no request the driver must refuse reaches it */
} ec_context;

/* Lists the Vulkan devices: fills up to `cap` entries of out, sets *count to the number present. */
ec_status ec_list_devices(ec_device_info *out, int cap, int *count);

/* selector: NULL or "" picks by type (discrete > integrated > virtual > cpu); a number is an index
 * into ec_list_devices; anything else is matched as a case-insensitive substring of the name. */
ec_status ec_context_create(const char *selector, int validation, uint64_t budget, ec_context **out);
void ec_context_destroy(ec_context *ctx);

/* Device memory. ec_alloc fails with EC_ERR_OOM when the request is larger than the device allows in one piece, when
 * it does not fit in the budget, or when the driver is out of memory; the message says how much was needed and how
 * much was available, and ec_oom_figures() returns the same two numbers. A failed ec_alloc leaves the context as it
 * was: nothing is held, in_use and reserved are unchanged (empty cached blocks may have been returned). */
ec_status ec_alloc(ec_context *ctx, VkDeviceSize size, ec_allocation *out);
void ec_free(ec_context *ctx, ec_allocation *a);
/* The bytes needed and available of this thread's last ec_alloc failure; returns 0 when that ec_alloc succeeded or
 * the last failure was not ec_alloc's. Read once: the figures are cleared. */
int ec_oom_figures(uint64_t *needed, uint64_t *available);
/* Sets the budget (0: none). Empty cached blocks are returned to the driver first when they would not fit in it;
 * memory already held by live tensors stays, and allocations fail until enough of it is freed. */
void ec_set_budget(ec_context *ctx, uint64_t budget);
ec_status ec_write(ec_context *ctx, const ec_allocation *a, VkDeviceSize offset, const void *src, size_t n);
ec_status ec_read(ec_context *ctx, const ec_allocation *a, VkDeviceSize offset, void *dst, size_t n);

/* Batches of recorded work. */
ec_status ec_batch_begin(ec_context *ctx);
ec_status ec_batch_submit(ec_context *ctx);     /* submit, wait, and close the batch */
void ec_batch_abort(ec_context *ctx);          /* drop what was recorded (after an error) */

/* Pipelines, built on first use and cached per (kernel, specialization constants). */
ec_status ec_pipeline_get(ec_context *ctx, int kernel, const uint32_t spec[8], ec_pipeline **out);

/* One binding of a dispatch: a storage-buffer range, or a uniform texel buffer view (buffer, offset and
 * range then say what the view covers, for the barrier tracking). */
typedef struct {
    VkBuffer buffer;
    VkDeviceSize offset, range;
    VkBufferView texel_view;
} ec_binding;

/* Records one dispatch into the open batch, after a barrier if it depends on earlier work of the batch.
 * Refuses work-group counts past the device's limits. */
ec_status ec_dispatch(ec_context *ctx, ec_pipeline *p, const ec_binding *bindings, const void *push,
                      uint32_t gx, uint32_t gy, uint32_t gz);

/* Records vkCmdFillBuffer(0) over [offset, offset + size) of buffer, after a barrier if earlier work of the
 * batch touches it. */
ec_status ec_fill_zero(ec_context *ctx, VkBuffer buffer, VkDeviceSize offset, VkDeviceSize size);

/* The workgroup width for reductions and for pointwise work, and the cap on work groups per dispatch:
 * lavapipe runs each workgroup as a loop on a CPU core and wants few, one-subgroup-wide ones; GPUs (and
 * EYECARE_EMULATE=gpu-workgroups) get 256-wide workgroups spanning several subgroups. */
int ec_cpu_shapes(const ec_context *ctx);
uint32_t ec_reduce_width(const ec_context *ctx);
uint32_t ec_pointwise_width(const ec_context *ctx);
uint32_t ec_grid_limit(const ec_context *ctx);

#endif
