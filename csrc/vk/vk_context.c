#include "vk/vk_context.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vk/kernels.h"

#define MiB (1024.0 * 1024.0)

/* ------------------------------------------------------------------------------------------------
 * Instance and device choice */

static const char *VALIDATION_LAYER = "VK_LAYER_KHRONOS_validation";

/* The validation layer reports through this callback; messages are counted and printed to stderr so
 * that the test suite can fail on any of them (tests/conftest.py reads the count). */
static int validation_messages;
int ec_validation_message_count(void) { return validation_messages; }

static VKAPI_ATTR VkBool32 VKAPI_CALL on_validation_message(
    VkDebugUtilsMessageSeverityFlagBitsEXT severity, VkDebugUtilsMessageTypeFlagsEXT type,
    const VkDebugUtilsMessengerCallbackDataEXT *data, void *user)
{
    (void)type; (void)user;
    if (severity & (VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT)) {
        validation_messages++;
        fprintf(stderr, "eyecare: Vulkan validation: %s\n", data->pMessage);
    }
    return VK_FALSE;
}

static int has_layer(const char *name)
{
    uint32_t n = 0;
    vkEnumerateInstanceLayerProperties(&n, NULL);
    VkLayerProperties *layers = calloc(n ? n : 1, sizeof *layers);
    if (!layers) return 0;
    vkEnumerateInstanceLayerProperties(&n, layers);
    int found = 0;
    for (uint32_t i = 0; i < n; i++)
        found |= strcmp(layers[i].layerName, name) == 0;
    free(layers);
    return found;
}

static int has_instance_extension(const char *name)
{
    uint32_t n = 0;
    vkEnumerateInstanceExtensionProperties(NULL, &n, NULL);
    VkExtensionProperties *ext = calloc(n ? n : 1, sizeof *ext);
    if (!ext) return 0;
    vkEnumerateInstanceExtensionProperties(NULL, &n, ext);
    int found = 0;
    for (uint32_t i = 0; i < n; i++)
        found |= strcmp(ext[i].extensionName, name) == 0;
    free(ext);
    return found;
}

static ec_status create_instance(int validation, VkInstance *out)
{
    EC_TRY(ec_vk_load());
    uint32_t version = VK_API_VERSION_1_0;
    if (vkEnumerateInstanceVersion) vkEnumerateInstanceVersion(&version);
    if (version < VK_API_VERSION_1_2)
        return ec_fail(EC_ERR_NO_DEVICE, "the Vulkan loader supports only Vulkan %u.%u; eyecare needs 1.2",
                       VK_API_VERSION_MAJOR(version), VK_API_VERSION_MINOR(version));
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .pApplicationName = "eyecare",
                             .pEngineName = "eyecare", .apiVersion = VK_API_VERSION_1_2};
    const char *layers[1] = {VALIDATION_LAYER};
    const char *extensions[3];
    uint32_t n_ext = 0;
    int use_validation = validation && has_layer(VALIDATION_LAYER);
    if (validation && !use_validation)
        return ec_fail(EC_ERR_NO_DEVICE, "EYECARE_VALIDATE=1 but the Khronos validation layer is not "
                       "installed; on Debian/Ubuntu run 'apt-get install vulkan-validationlayers'");
    if (use_validation) extensions[n_ext++] = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
    /* MoltenVK (macOS) and other layered implementations list their devices only to instances that ask for
     * portability enumeration; loaders that do not know the extension do not offer it. */
    VkInstanceCreateFlags flags = 0;
    if (has_instance_extension("VK_KHR_portability_enumeration")) {
        extensions[n_ext++] = "VK_KHR_portability_enumeration";
        flags |= 0x00000001; /* VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR */
    }
    /* With validation on, synchronization validation too: a missing barrier is a reported hazard even on
     * lavapipe, which executes in order and would never show the race. */
    VkValidationFeatureEnableEXT enables[1] = {VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT};
    VkValidationFeaturesEXT features = {.sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT,
                                        .enabledValidationFeatureCount = 1, .pEnabledValidationFeatures = enables};
    VkInstanceCreateInfo info = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pNext = use_validation ? &features : NULL,
                                 .flags = flags, .pApplicationInfo = &app,
                                 .enabledLayerCount = use_validation, .ppEnabledLayerNames = layers,
                                 .enabledExtensionCount = n_ext, .ppEnabledExtensionNames = extensions};
    VkResult r = vkCreateInstance(&info, NULL, out);
    if (r != VK_SUCCESS)
        return ec_fail(EC_ERR_NO_DEVICE, "vkCreateInstance failed (VkResult %d): no working Vulkan driver; "
                       "on Debian/Ubuntu run 'apt-get install mesa-vulkan-drivers' for lavapipe (CPU)", r);
    ec_vk_load_instance(*out);
    return EC_OK;
}

static int device_has_extension(VkPhysicalDevice pd, const char *name)
{
    uint32_t n = 0;
    vkEnumerateDeviceExtensionProperties(pd, NULL, &n, NULL);
    VkExtensionProperties *ext = calloc(n ? n : 1, sizeof *ext);
    if (!ext) return 0;
    vkEnumerateDeviceExtensionProperties(pd, NULL, &n, ext);
    int found = 0;
    for (uint32_t i = 0; i < n; i++)
        found |= strcmp(ext[i].extensionName, name) == 0;
    free(ext);
    return found;
}

static void describe_device(VkPhysicalDevice pd, ec_device_info *info)
{
    /* The PCI structure may only be chained when the device offers the extension. */
    int has_pci = device_has_extension(pd, VK_EXT_PCI_BUS_INFO_EXTENSION_NAME);
    VkPhysicalDevicePCIBusInfoPropertiesEXT pci = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PCI_BUS_INFO_PROPERTIES_EXT};
    VkPhysicalDeviceIDProperties id = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES,
                                       .pNext = has_pci ? &pci : NULL};
    VkPhysicalDeviceSubgroupProperties subgroup = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES,
                                                   .pNext = &id};
    VkPhysicalDeviceProperties2 props = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &subgroup};
    vkGetPhysicalDeviceProperties2(pd, &props);
    const VkPhysicalDeviceProperties *p = &props.properties;
    memset(info, 0, sizeof *info);
    memcpy(info->uuid, id.deviceUUID, VK_UUID_SIZE);
    info->has_pci = has_pci;
    info->pci_domain = pci.pciDomain;
    info->pci_bus = pci.pciBus;
    info->pci_device = pci.pciDevice;
    info->pci_function = pci.pciFunction;
    snprintf(info->name, sizeof info->name, "%s", p->deviceName);
    const char *type = "other";
    switch (p->deviceType) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: type = "discrete"; break;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: type = "integrated"; break;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: type = "virtual"; break;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: type = "cpu"; break;
    default: break;
    }
    snprintf(info->type, sizeof info->type, "%s", type);
    info->vendor_id = p->vendorID;
    info->device_id = p->deviceID;
    info->api_version = p->apiVersion;
    info->subgroup_size = subgroup.subgroupSize;
    info->subgroup_operations = (subgroup.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) ? subgroup.supportedOperations : 0;
    info->max_storage_buffer_range = p->limits.maxStorageBufferRange;
    info->max_texel_buffer_elements = p->limits.maxTexelBufferElements;
    info->max_shared_memory = p->limits.maxComputeSharedMemorySize;
    info->max_workgroup_invocations = p->limits.maxComputeWorkGroupInvocations;
    info->push_descriptor = device_has_extension(pd, VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME);
    VkPhysicalDeviceMemoryProperties mem;
    vkGetPhysicalDeviceMemoryProperties(pd, &mem);
    for (uint32_t i = 0; i < mem.memoryHeapCount; i++)
        if ((mem.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) && mem.memoryHeaps[i].size > info->memory_bytes)
            info->memory_bytes = mem.memoryHeaps[i].size;
}

static int type_rank(const char *type)
{
    const char *order[] = {"discrete", "integrated", "virtual", "cpu", "other"};
    for (int i = 0; i < 5; i++)
        if (strcmp(type, order[i]) == 0) return i;
    return 5;
}

static ec_status enumerate(VkInstance instance, VkPhysicalDevice **devices, uint32_t *count)
{
    *count = 0;
    VkResult r = vkEnumeratePhysicalDevices(instance, count, NULL);
    if (r != VK_SUCCESS || *count == 0)
        return ec_fail(EC_ERR_NO_DEVICE, "no Vulkan device found; on Debian/Ubuntu run 'apt-get install "
                       "mesa-vulkan-drivers' for lavapipe, which runs Vulkan on the CPU");
    *devices = calloc(*count, sizeof **devices);
    if (!*devices) return ec_fail(EC_ERR_OOM, "out of host memory");
    vkEnumeratePhysicalDevices(instance, count, *devices);
    return EC_OK;
}

ec_status ec_list_devices(ec_device_info *out, int cap, int *count)
{
    VkInstance instance;
    EC_TRY(create_instance(0, &instance));
    VkPhysicalDevice *devices = NULL;
    uint32_t n = 0;
    ec_status s = enumerate(instance, &devices, &n);
    if (s == EC_OK) {
        for (uint32_t i = 0; i < n && (int)i < cap; i++)
            describe_device(devices[i], &out[i]);
        *count = (int)n;
    }
    free(devices);
    vkDestroyInstance(instance, NULL);
    return s;
}

static int contains_ignore_case(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == n) return 1;
    }
    return n == 0;
}

static ec_status choose_device(VkInstance instance, const char *selector, VkPhysicalDevice *out)
{
    VkPhysicalDevice *devices;
    uint32_t n;
    EC_TRY(enumerate(instance, &devices, &n));
    int chosen = -1;
    ec_device_info info;
    if (selector && *selector) {
        char *end;
        long index = strtol(selector, &end, 10);
        if (*end == 0) {
            if (index < 0 || index >= (long)n) {
                free(devices);
                return ec_fail(EC_ERR_NO_DEVICE, "EYECARE_DEVICE=%s: there are %u Vulkan devices (0..%u)",
                               selector, n, n - 1);
            }
            chosen = (int)index;
        } else {
            for (uint32_t i = 0; i < n && chosen < 0; i++) {
                describe_device(devices[i], &info);
                if (contains_ignore_case(info.name, selector)) chosen = (int)i;
            }
            if (chosen < 0) {
                free(devices);
                return ec_fail(EC_ERR_NO_DEVICE, "EYECARE_DEVICE=%s matches no Vulkan device name "
                               "(see eyecare.devices())", selector);
            }
        }
    } else {
        int best = 99;
        for (uint32_t i = 0; i < n; i++) {
            describe_device(devices[i], &info);
            if (info.api_version < VK_API_VERSION_1_2) continue;
            int rank = type_rank(info.type);
            if (rank < best) { best = rank; chosen = (int)i; }
        }
        if (chosen < 0) {
            free(devices);
            return ec_fail(EC_ERR_NO_DEVICE, "no Vulkan 1.2 device found; update the driver");
        }
    }
    *out = devices[chosen];
    free(devices);
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Device memory: big blocks, each with one buffer over all of it, carved up first-fit. Tensors are
 * (buffer, offset) pairs, so a model with a thousand tensors makes a handful of allocations. */

#define BLOCK_BYTES ((VkDeviceSize)256 << 20)
#define ALIGNMENT ((VkDeviceSize)256) /* >= every device's storage/texel offset alignment */

typedef struct ec_span { VkDeviceSize offset, size; struct ec_span *next; } ec_span;

struct ec_block {
    VkDeviceMemory memory;
    uint32_t type;        /* its memory type */
    VkBuffer buffer;
    VkDeviceSize size;
    void *mapped;
    ec_span *free_spans; /* sorted by offset, coalesced */
    VkDeviceSize used;
    ec_block *next;
};

static VkBufferUsageFlags BUFFER_USAGE = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_UNIFORM_TEXEL_BUFFER_BIT |
                                         VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;

/* The memory type for a buffer: one its requirements allow (memoryTypeBits) with every flag in `flags`,
 * preferring one that also has those in `prefer`; -1 if none. */
static int choose_type(ec_context *ctx, uint32_t bits, VkMemoryPropertyFlags flags, VkMemoryPropertyFlags prefer)
{
    VkPhysicalDeviceMemoryProperties mem;
    vkGetPhysicalDeviceMemoryProperties(ctx->physical, &mem);
    int fallback = -1;
    for (uint32_t i = 0; i < mem.memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = mem.memoryTypes[i].propertyFlags;
        if (!(bits & (1u << i)) || (f & flags) != flags) continue;
        if ((f & prefer) == prefer) return (int)i;
        if (fallback < 0) fallback = (int)i;
    }
    return fallback;
}

static ec_status new_block(ec_context *ctx, VkDeviceSize size, VkMemoryPropertyFlags flags, VkMemoryPropertyFlags prefer,
                           int map, ec_block **out)
{
    ec_block *b = calloc(1, sizeof *b);
    if (!b) return ec_fail(EC_ERR_OOM, "out of host memory");
    b->size = size;
    VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = size, .usage = BUFFER_USAGE,
                             .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    VkResult r = vkCreateBuffer(ctx->device, &bi, NULL, &b->buffer);
    if (r != VK_SUCCESS) { free(b); return ec_fail(EC_ERR_OOM, "vkCreateBuffer of %.1f MiB failed (VkResult %d)", size / MiB, r); }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(ctx->device, b->buffer, &req);
    int type = choose_type(ctx, req.memoryTypeBits, flags, prefer);
    if (type < 0) {
        vkDestroyBuffer(ctx->device, b->buffer, NULL);
        free(b);
        return ec_fail(EC_ERR_NO_DEVICE, "%s offers no memory type with flags 0x%x for a buffer (memoryTypeBits 0x%x)",
                       ctx->info.name, (unsigned)flags, (unsigned)req.memoryTypeBits);
    }
    b->type = (uint32_t)type;
    VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = req.size, .memoryTypeIndex = b->type};
    r = vkAllocateMemory(ctx->device, &ai, NULL, &b->memory);
    if (r != VK_SUCCESS) {
        vkDestroyBuffer(ctx->device, b->buffer, NULL);
        free(b);
        return ec_fail(EC_ERR_OOM, "vkAllocateMemory of %.1f MiB failed (VkResult %d)", size / MiB, r);
    }
    vkBindBufferMemory(ctx->device, b->buffer, b->memory, 0);
    if (map && vkMapMemory(ctx->device, b->memory, 0, VK_WHOLE_SIZE, 0, &b->mapped) != VK_SUCCESS) {
        vkFreeMemory(ctx->device, b->memory, NULL);
        vkDestroyBuffer(ctx->device, b->buffer, NULL);
        free(b);
        return ec_fail(EC_ERR_DEVICE, "vkMapMemory failed");
    }
    b->free_spans = calloc(1, sizeof *b->free_spans);
    if (!b->free_spans) {
        if (b->mapped) vkUnmapMemory(ctx->device, b->memory);
        vkFreeMemory(ctx->device, b->memory, NULL);
        vkDestroyBuffer(ctx->device, b->buffer, NULL);
        free(b);
        return ec_fail(EC_ERR_OOM, "out of host memory");
    }
    b->free_spans->size = size;
    *out = b;
    return EC_OK;
}

static void destroy_block(ec_context *ctx, ec_block *b)
{
    for (ec_span *s = b->free_spans, *n; s; s = n) { n = s->next; free(s); }
    vkDestroyBuffer(ctx->device, b->buffer, NULL);
    vkFreeMemory(ctx->device, b->memory, NULL);
    free(b);
}

static int take_span(ec_block *b, VkDeviceSize size, VkDeviceSize *offset)
{
    for (ec_span **link = &b->free_spans; *link; link = &(*link)->next) {
        ec_span *s = *link;
        if (s->size < size) continue;
        *offset = s->offset;
        s->offset += size;
        s->size -= size;
        if (s->size == 0) { *link = s->next; free(s); }
        b->used += size;
        return 1;
    }
    return 0;
}

static void give_span(ec_block *b, VkDeviceSize offset, VkDeviceSize size)
{
    ec_span **link = &b->free_spans;
    while (*link && (*link)->offset < offset) link = &(*link)->next;
    ec_span *prev = NULL;
    for (ec_span *s = b->free_spans; s && s->offset < offset; s = s->next) prev = s;
    ec_span *next = *link;
    b->used -= size;
    if (prev && prev->offset + prev->size == offset) {
        prev->size += size;
        if (next && prev->offset + prev->size == next->offset) { prev->size += next->size; prev->next = next->next; free(next); }
        return;
    }
    if (next && offset + size == next->offset) { next->offset = offset; next->size += size; return; }
    ec_span *s = malloc(sizeof *s);
    if (!s) return; /* the span is lost to the block, not to the process: harmless */
    s->offset = offset; s->size = size; s->next = next;
    *link = s;
}

/* ------------------------------------------------------------------------------------------------
 * Allocation failures: the message says how much was needed and how much was available, and the
 * same two figures are kept for ec_oom_figures (which the Python binding turns into attributes). */

static _Thread_local struct { int set; uint64_t needed, available; } oom_figures;

int ec_oom_figures(uint64_t *needed, uint64_t *available)
{
    if (!oom_figures.set) return 0;
    *needed = oom_figures.needed;
    *available = oom_figures.available;
    oom_figures.set = 0;
    return 1;
}

/* "1.50 GiB" or "12.0 MiB": the temporaries live until the end of the full expression (C11 6.2.4p8). */
typedef struct { char s[32]; } bytes_text;
static bytes_text H(uint64_t n)
{
    bytes_text t;
    if (n >= ((uint64_t)1 << 30)) snprintf(t.s, sizeof t.s, "%.2f GiB", n / (MiB * 1024.0));
    else snprintf(t.s, sizeof t.s, "%.1f MiB", n / MiB);
    return t;
}

static ec_status oom(uint64_t needed, uint64_t available, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static ec_status oom(uint64_t needed, uint64_t available, const char *fmt, ...)
{
    char message[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    ec_fail(EC_ERR_OOM, "%s", message);
    oom_figures.set = 1;
    oom_figures.needed = needed;
    oom_figures.available = available;
    return EC_ERR_OOM;
}

/* The largest free span of any block: the biggest allocation that needs no new block. */
static VkDeviceSize largest_free_span(const ec_context *ctx)
{
    VkDeviceSize best = 0;
    for (const ec_block *b = ctx->blocks; b; b = b->next)
        for (const ec_span *s = b->free_spans; s; s = s->next)
            if (s->size > best) best = s->size;
    return best;
}

/* Gives empty blocks (ec_free keeps one cached for small tensors) back to the driver. */
static void release_empty_blocks(ec_context *ctx)
{
    for (ec_block **link = &ctx->blocks; *link;) {
        ec_block *b = *link;
        if (b->used == 0) {
            *link = b->next;
            ctx->reserved -= b->size;
            destroy_block(ctx, b);
        } else {
            link = &b->next;
        }
    }
}

void ec_set_budget(ec_context *ctx, uint64_t budget)
{
    ctx->budget = budget;
    if (budget && ctx->reserved > budget) release_empty_blocks(ctx);
}

/* A new block of `size` bytes (at least `need`), linked into the context. */
static ec_status add_block(ec_context *ctx, VkDeviceSize size, VkDeviceSize need, ec_block **out)
{
    VkMemoryPropertyFlags f = ctx->tensor_flags, pf = ctx->tensor_prefer;
    ec_status s = new_block(ctx, size, f, pf, ctx->host_visible, out);
    /* Near the end of device memory a whole default block may not fit where the request would; and blocks that
     * eyecare holds but does not use are worth giving back before giving up. */
    if (s == EC_ERR_OOM && size > need) s = new_block(ctx, need, f, pf, ctx->host_visible, out);
    if (s == EC_ERR_OOM && ctx->blocks) {
        release_empty_blocks(ctx);
        s = new_block(ctx, need, f, pf, ctx->host_visible, out);
    }
    if (s) return s;
    (*out)->next = ctx->blocks;
    ctx->blocks = *out;
    ctx->reserved += (*out)->size;
    return EC_OK;
}

ec_status ec_alloc(ec_context *ctx, VkDeviceSize size, ec_allocation *out)
{
    memset(out, 0, sizeof *out);
    oom_figures.set = 0;
    /* Checked before rounding, which could otherwise wrap a size near 2^64 to a small one. max_allocation is at most
     * a heap's size, far below 2^63. */
    VkDeviceSize need = size > ctx->max_allocation ? size : size ? (size + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT : ALIGNMENT;
    if (need > ctx->max_allocation)
        return oom(size, ctx->max_allocation, "out of device memory: %s needed in one piece, but %s allows at most %s "
                   "in one allocation", H(size).s, ctx->info.name, H(ctx->max_allocation).s);
    VkDeviceSize offset = 0;
    ec_block *b = ctx->blocks;
    for (; b; b = b->next)
        if (take_span(b, need, &offset)) break;
    if (!b) {
        VkDeviceSize size_of_block = need > BLOCK_BYTES ? need : BLOCK_BYTES;
        if (ctx->budget) {
            if (ctx->reserved + need > ctx->budget) release_empty_blocks(ctx);
            if (ctx->reserved + need > ctx->budget) {
                uint64_t headroom = ctx->budget > ctx->reserved ? ctx->budget - ctx->reserved : 0;
                uint64_t largest = largest_free_span(ctx);
                return oom(need, largest > headroom ? largest : headroom,
                           "device memory budget exceeded: %s needed, %s available (budget %s, of which eyecare holds "
                           "%s, %s of it in live tensors); raise EYECARE_MAX_DEVICE_MEMORY or max_device_memory=, "
                           "or free tensors", H(need).s, H(largest > headroom ? largest : headroom).s,
                           H(ctx->budget).s, H(ctx->reserved).s, H(ctx->in_use).s);
            }
            /* Blocks shrink to what is left of the budget, so that eyecare never holds more than it. */
            if (ctx->reserved + size_of_block > ctx->budget) size_of_block = ctx->budget - ctx->reserved;
        }
        if (size_of_block > ctx->max_allocation) size_of_block = ctx->max_allocation;
        ec_status s = add_block(ctx, size_of_block, need, &b);
        if (s == EC_ERR_OOM) {
            char driver[300];
            snprintf(driver, sizeof driver, "%s", ec_last_error());
            uint64_t left = ctx->heap_bytes > ctx->reserved ? ctx->heap_bytes - ctx->reserved : 0;
            return oom(need, left, "out of device memory: %s needed, at most %s available (%s has a %s heap, of which "
                       "eyecare holds %s; other programs may use the rest): %s", H(need).s, H(left).s, ctx->info.name,
                       H(ctx->heap_bytes).s, H(ctx->reserved).s, driver);
        }
        if (s) return s;
        take_span(b, need, &offset);
    }
    ctx->in_use += need;
    out->block = b;
    out->buffer = b->buffer;
    out->offset = offset;
    out->size = need;
    out->mapped = b->mapped ? (char *)b->mapped + offset : NULL;
    return EC_OK;
}

void ec_free(ec_context *ctx, ec_allocation *a)
{
    if (!a->block) return;
    ec_block *b = a->block;
    give_span(b, a->offset, a->size);
    ctx->in_use -= a->size;
    /* Give an empty block back to the driver, keeping the first one for small tensors unless it was made for one
     * big tensor (which would otherwise stay reserved after that tensor is gone). */
    if (b->used == 0 && (b != ctx->blocks || b->size > BLOCK_BYTES)) {
        for (ec_block **link = &ctx->blocks; *link; link = &(*link)->next)
            if (*link == b) { *link = b->next; break; }
        ctx->reserved -= b->size;
        destroy_block(ctx, b);
    }
    memset(a, 0, sizeof *a);
}

/* Copies through a staging buffer on devices whose memory the host cannot map (discrete GPUs, and
 * EYECARE_EMULATE=discrete-memory): each piece is one batch, the copy then a barrier that makes it visible
 * to the host (ec_batch_submit). Downloads go through host-cached memory where the device has it: reading
 * uncached (write-combined) memory from the CPU is many times slower. */
static ec_status staged_copy(ec_context *ctx, const ec_allocation *a, VkDeviceSize offset, void *host, size_t n, int upload)
{
    const VkDeviceSize chunk = 64 << 20;
    ec_allocation *st = upload ? &ctx->staging_up : &ctx->staging_down;
    if (!st->block) {
        ec_block *b;
        if (upload) EC_TRY(new_block(ctx, chunk, ctx->upload_flags, ctx->upload_prefer, 1, &b));
        else EC_TRY(new_block(ctx, chunk, ctx->download_flags, ctx->download_prefer, 1, &b));
        st->block = b; st->buffer = b->buffer; st->size = chunk; st->mapped = b->mapped;
        if (!upload) {
            VkPhysicalDeviceMemoryProperties mem;
            vkGetPhysicalDeviceMemoryProperties(ctx->physical, &mem);
            ctx->staging_down_coherent = (mem.memoryTypes[b->type].propertyFlags & VK_MEMORY_PROPERTY_HOST_COHERENT_BIT) != 0;
        }
    }
    for (size_t done = 0; done < n;) {
        VkDeviceSize len = n - done < chunk ? n - done : chunk;
        if (upload) memcpy(st->mapped, (char *)host + done, len);
        EC_TRY(ec_batch_begin(ctx));
        VkBufferCopy region = upload ? (VkBufferCopy){0, a->offset + offset + done, len}
                                     : (VkBufferCopy){a->offset + offset + done, 0, len};
        if (upload) vkCmdCopyBuffer(ctx->cmd, st->buffer, a->buffer, 1, &region);
        else vkCmdCopyBuffer(ctx->cmd, a->buffer, st->buffer, 1, &region);
        ctx->batch_wrote = 1;
        ctx->counters.staging_copies++;
        EC_TRY(ec_batch_submit(ctx));
        if (!upload) {
            if (!ctx->staging_down_coherent) {
                VkMappedMemoryRange range = {.sType = VK_STRUCTURE_TYPE_MAPPED_MEMORY_RANGE, .memory = st->block->memory,
                                             .offset = 0, .size = VK_WHOLE_SIZE};
                vkInvalidateMappedMemoryRanges(ctx->device, 1, &range);
            }
            memcpy((char *)host + done, st->mapped, len);
        }
        done += len;
    }
    return EC_OK;
}

ec_status ec_write(ec_context *ctx, const ec_allocation *a, VkDeviceSize offset, const void *src, size_t n)
{
    if (offset + n > a->size) return ec_fail(EC_ERR_ARG, "write of %zu bytes past the end of a %llu-byte buffer", n, (unsigned long long)a->size);
    if (ctx->recording) EC_TRY(ec_batch_submit(ctx)); /* recorded work may still read the old contents */
    if (a->mapped) { memcpy((char *)a->mapped + offset, src, n); return EC_OK; }
    return staged_copy(ctx, a, offset, (void *)src, n, 1);
}

ec_status ec_read(ec_context *ctx, const ec_allocation *a, VkDeviceSize offset, void *dst, size_t n)
{
    if (offset + n > a->size) return ec_fail(EC_ERR_ARG, "read of %zu bytes past the end of a %llu-byte buffer", n, (unsigned long long)a->size);
    if (ctx->recording) EC_TRY(ec_batch_submit(ctx));
    if (a->mapped) { memcpy(dst, (char *)a->mapped + offset, n); return EC_OK; }
    return staged_copy(ctx, a, offset, dst, n, 0);
}

/* ------------------------------------------------------------------------------------------------
 * Context */

/* Which memory each kind of buffer needs. Tensors: device-local, and also host-visible and coherent (mapped,
 * no staging) where such memory is the whole device heap (CPUs, unified memory); on discrete GPUs that is
 * the small BAR window, so tensors live in plain device memory and transfers go through staging. Uploads:
 * host-visible coherent. Downloads: host-visible, preferably cached (then invalidated if not coherent). The
 * type itself is chosen per buffer from its memoryTypeBits (choose_type). */
static ec_status pick_memory_types(ec_context *ctx)
{
    VkPhysicalDeviceMemoryProperties mem;
    vkGetPhysicalDeviceMemoryProperties(ctx->physical, &mem);
    const VkMemoryPropertyFlags visible = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    const VkMemoryPropertyFlags local = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
    int any_local = 0, uma = 0, any_visible = 0;
    for (uint32_t i = 0; i < mem.memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = mem.memoryTypes[i].propertyFlags;
        any_local |= (f & local) != 0;
        any_visible |= (f & visible) == visible;
        if ((f & (local | visible)) == (local | visible) && mem.memoryHeaps[mem.memoryTypes[i].heapIndex].size >= ctx->info.memory_bytes)
            uma = 1;
    }
    if (!any_visible) return ec_fail(EC_ERR_NO_DEVICE, "%s offers no host-visible, coherent memory", ctx->info.name);
    if (ctx->emulate & EC_EMULATE_DISCRETE_MEMORY) uma = 0;
    if (uma) {
        ctx->tensor_flags = local | visible;
        ctx->tensor_prefer = local | visible | VK_MEMORY_PROPERTY_HOST_CACHED_BIT;
        ctx->host_visible = 1;
    } else if (any_local) {
        ctx->tensor_flags = ctx->tensor_prefer = local;
    } else {
        ctx->tensor_flags = ctx->tensor_prefer = visible;
        ctx->host_visible = !(ctx->emulate & EC_EMULATE_DISCRETE_MEMORY);
    }
    ctx->upload_flags = ctx->upload_prefer = visible;
    ctx->download_flags = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT;
    ctx->download_prefer = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_CACHED_BIT;
    /* The type a tensor block gets, found with a probe buffer: its heap is the one budgets refer to. */
    VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = 4096, .usage = BUFFER_USAGE,
                             .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    VkBuffer probe;
    if (vkCreateBuffer(ctx->device, &bi, NULL, &probe) != VK_SUCCESS)
        return ec_fail(EC_ERR_DEVICE, "vkCreateBuffer failed on %s", ctx->info.name);
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(ctx->device, probe, &req);
    vkDestroyBuffer(ctx->device, probe, NULL);
    int type = choose_type(ctx, req.memoryTypeBits, ctx->tensor_flags, ctx->tensor_prefer);
    if (type < 0) return ec_fail(EC_ERR_NO_DEVICE, "%s offers no memory type for storage buffers", ctx->info.name);
    ctx->memory_type = (uint32_t)type;
    return EC_OK;
}

/* The largest allocation the device takes: a single allocation larger than its heap is invalid (the validation layer
 * says so), as is one beyond maxMemoryAllocationSize (Vulkan 1.1) or a buffer beyond maxBufferSize (1.3). */
static void allocation_limits(ec_context *ctx)
{
    VkPhysicalDeviceMemoryProperties mem;
    vkGetPhysicalDeviceMemoryProperties(ctx->physical, &mem);
    ctx->heap_bytes = mem.memoryHeaps[mem.memoryTypes[ctx->memory_type].heapIndex].size;
    VkPhysicalDeviceMaintenance4Properties m4 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_4_PROPERTIES};
    VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES,
                                                 .pNext = ctx->info.api_version >= VK_API_VERSION_1_3 ? &m4 : NULL};
    VkPhysicalDeviceProperties2 props = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &m3};
    vkGetPhysicalDeviceProperties2(ctx->physical, &props);
    uint64_t limit = ctx->heap_bytes;
    if (m3.maxMemoryAllocationSize && m3.maxMemoryAllocationSize < limit) limit = m3.maxMemoryAllocationSize;
    if (m4.maxBufferSize && m4.maxBufferSize < limit) limit = m4.maxBufferSize;
    ctx->max_allocation = limit / ALIGNMENT * ALIGNMENT;
}

/* EYECARE_EMULATE: a comma-separated list of modes, or "all" (docs/devices.md). */
static ec_status parse_emulation(ec_context *ctx)
{
    static const struct { const char *name; unsigned bit; } modes[] = {
        {"discrete-memory", EC_EMULATE_DISCRETE_MEMORY}, {"gpu-workgroups", EC_EMULATE_GPU_WORKGROUPS},
        {"small-limits", EC_EMULATE_SMALL_LIMITS}, {"split-submits", EC_EMULATE_SPLIT_SUBMITS},
        {"all", EC_EMULATE_DISCRETE_MEMORY | EC_EMULATE_GPU_WORKGROUPS | EC_EMULATE_SMALL_LIMITS | EC_EMULATE_SPLIT_SUBMITS}};
    const char *text = getenv("EYECARE_EMULATE");
    if (!text) return EC_OK;
    char word[64];
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, ", ");
        if (n > 0) {
            snprintf(word, sizeof word, "%.*s", (int)(n < sizeof word - 1 ? n : sizeof word - 1), p);
            unsigned bit = 0;
            for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
                if (strcmp(word, modes[i].name) == 0) bit = modes[i].bit;
            if (!bit)
                return ec_fail(EC_ERR_ARG, "EYECARE_EMULATE=%s: unknown mode '%s' (modes: discrete-memory, gpu-workgroups, "
                               "small-limits, split-submits, all)", text, word);
            ctx->emulate |= bit;
        }
        p += n;
        while (*p == ',' || *p == ' ') p++;
    }
    return EC_OK;
}

/* The widest workgroup any kernel asks for, and the shared memory and push constants the kernels use: the
 * device must allow them (the Vulkan minimums are 128 invocations, 16 KiB and 128 bytes). */
#define EC_MAX_WIDTH 256u
#define EC_SHARED_BYTES 512u /* common.glsl wg_partial[64] + argmax.comp wg_index[64] */

static ec_status check_requirements(ec_context *ctx)
{
    const ec_device_info *d = &ctx->info;
    const VkPhysicalDeviceLimits *l = &ctx->limits;
    if (!d->push_descriptor)
        return ec_fail(EC_ERR_NO_DEVICE, "%s lacks VK_KHR_push_descriptor, which eyecare needs (docs/devices.md)", d->name);
    const uint32_t ops = VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_ARITHMETIC_BIT | VK_SUBGROUP_FEATURE_BALLOT_BIT |
                         VK_SUBGROUP_FEATURE_SHUFFLE_BIT;
    if ((d->subgroup_operations & ops) != ops) {
        char missing[96] = "";
        if (!(d->subgroup_operations & VK_SUBGROUP_FEATURE_BASIC_BIT)) strcat(missing, " basic");
        if (!(d->subgroup_operations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT)) strcat(missing, " arithmetic");
        if (!(d->subgroup_operations & VK_SUBGROUP_FEATURE_BALLOT_BIT)) strcat(missing, " ballot");
        if (!(d->subgroup_operations & VK_SUBGROUP_FEATURE_SHUFFLE_BIT)) strcat(missing, " shuffle");
        return ec_fail(EC_ERR_NO_DEVICE, "%s lacks subgroup operations in compute shaders that eyecare needs:%s "
                       "(VkPhysicalDeviceSubgroupProperties.supportedOperations; docs/devices.md)", d->name, missing);
    }
    if (d->subgroup_size < 4 || d->subgroup_size > 128)
        return ec_fail(EC_ERR_NO_DEVICE, "%s has a subgroup size of %u; eyecare's reductions need 4 to 128", d->name, d->subgroup_size);
    uint32_t widest = ec_cpu_shapes(ctx) ? (d->subgroup_size > 64 ? d->subgroup_size : 64) : EC_MAX_WIDTH;
    if (l->maxComputeWorkGroupInvocations < widest || l->maxComputeWorkGroupSize[0] < widest)
        return ec_fail(EC_ERR_NO_DEVICE, "%s allows %u invocations per workgroup (x up to %u); eyecare's kernels use %u",
                       d->name, l->maxComputeWorkGroupInvocations, l->maxComputeWorkGroupSize[0], widest);
    if (l->maxComputeSharedMemorySize < EC_SHARED_BYTES)
        return ec_fail(EC_ERR_NO_DEVICE, "%s has %u bytes of shared memory per workgroup; eyecare's kernels use %u",
                       d->name, l->maxComputeSharedMemorySize, EC_SHARED_BYTES);
    uint32_t push = 0;
    for (int i = 0; i < ec_kernel_count; i++)
        if (ec_kernels[i].push_size > push) push = ec_kernels[i].push_size;
    if (l->maxPushConstantsSize < push)
        return ec_fail(EC_ERR_NO_DEVICE, "%s allows %u bytes of push constants; eyecare's kernels use %u", d->name,
                       l->maxPushConstantsSize, push);
    if (l->maxComputeWorkGroupCount[0] < 65535 || l->maxComputeWorkGroupCount[1] < 65535 || l->maxComputeWorkGroupCount[2] < 65535)
        return ec_fail(EC_ERR_NO_DEVICE, "%s allows fewer than 65535 work groups per dimension", d->name);
    if (l->maxTexelBufferElements < 65536)
        return ec_fail(EC_ERR_NO_DEVICE, "%s has maxTexelBufferElements %u, under the Vulkan minimum of 65536", d->name,
                       l->maxTexelBufferElements);
    return EC_OK;
}

/* How many dispatches go in one submit. Display drivers kill a submit that runs for more than a couple of
 * seconds (Windows TDR, i915 hangcheck): on GPUs a long batch (a whole prefill, a vision pass) goes in
 * pieces; lavapipe has no watchdog. EYECARE_SUBMIT_DISPATCHES overrides (0: never split). */
static ec_status choose_submit_size(ec_context *ctx)
{
    ctx->submit_every = strcmp(ctx->info.type, "cpu") == 0 ? 0 : 512;
    if (ctx->emulate & EC_EMULATE_SPLIT_SUBMITS) ctx->submit_every = 4;
    const char *text = getenv("EYECARE_SUBMIT_DISPATCHES");
    if (text && *text) {
        char *end;
        long v = strtol(text, &end, 10);
        if (*end || v < 0 || v > 1000000)
            return ec_fail(EC_ERR_ARG, "EYECARE_SUBMIT_DISPATCHES=%s is not a count of dispatches (0 for no limit)", text);
        ctx->submit_every = (uint32_t)v;
    }
    return EC_OK;
}

int ec_cpu_shapes(const ec_context *ctx)
{
    return strcmp(ctx->info.type, "cpu") == 0 && !(ctx->emulate & EC_EMULATE_GPU_WORKGROUPS);
}
uint32_t ec_reduce_width(const ec_context *ctx) { return ec_cpu_shapes(ctx) ? ctx->info.subgroup_size : EC_MAX_WIDTH; }
uint32_t ec_pointwise_width(const ec_context *ctx) { return ec_cpu_shapes(ctx) ? 64 : EC_MAX_WIDTH; }
uint32_t ec_grid_limit(const ec_context *ctx) { return ec_cpu_shapes(ctx) ? 64 : 65535; }

ec_status ec_context_create(const char *selector, int validation, uint64_t budget, ec_context **out)
{
    *out = NULL;
    ec_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return ec_fail(EC_ERR_OOM, "out of host memory");
    pthread_mutex_init(&ctx->lock, NULL);
    ctx->budget = budget;
    ec_status s = create_instance(validation, &ctx->instance);
    if (s) { free(ctx); return s; }
    ctx->validation = validation;
    if (validation) {
        VkDebugUtilsMessengerCreateInfoEXT mi = {
            .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
            .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
            .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
            .pfnUserCallback = on_validation_message};
        vkCreateDebugUtilsMessengerEXT(ctx->instance, &mi, NULL, &ctx->messenger);
    }
    if ((s = choose_device(ctx->instance, selector, &ctx->physical))) goto fail;
    if ((s = parse_emulation(ctx))) goto fail;
    describe_device(ctx->physical, &ctx->info);
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(ctx->physical, &props);
    ctx->limits = props.limits;
    if (ctx->emulate & EC_EMULATE_SMALL_LIMITS) {
        /* Limits some devices report (Mali: 2^16 texels; many mobile GPUs: 128 MiB storage ranges), scaled so
         * that the tests' small tensors already take the splitting paths. */
        if (ctx->limits.maxTexelBufferElements > (1u << 20)) ctx->limits.maxTexelBufferElements = 1u << 20;
        if (ctx->limits.maxStorageBufferRange > (16u << 20)) ctx->limits.maxStorageBufferRange = 16u << 20;
        ctx->info.max_texel_buffer_elements = ctx->limits.maxTexelBufferElements;
        ctx->info.max_storage_buffer_range = ctx->limits.maxStorageBufferRange;
    }
    if ((s = check_requirements(ctx))) goto fail;

    uint32_t nfam = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(ctx->physical, &nfam, NULL);
    VkQueueFamilyProperties fam[32];
    if (nfam > 32) nfam = 32;
    vkGetPhysicalDeviceQueueFamilyProperties(ctx->physical, &nfam, fam);
    int family = -1;
    for (uint32_t i = 0; i < nfam && family < 0; i++)
        if (fam[i].queueFlags & VK_QUEUE_COMPUTE_BIT) family = (int)i;
    if (family < 0) { s = ec_fail(EC_ERR_NO_DEVICE, "%s has no compute queue", ctx->info.name); goto fail; }
    ctx->queue_family = (uint32_t)family;

    /* Optional features, enabled where present: 16-bit storage and float16 arithmetic. */
    VkPhysicalDeviceVulkan11Features f11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES, .pNext = &f11};
    VkPhysicalDeviceFeatures2 supported = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12};
    vkGetPhysicalDeviceFeatures2(ctx->physical, &supported);
    VkPhysicalDeviceVulkan11Features want11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
                                               .storageBuffer16BitAccess = f11.storageBuffer16BitAccess};
    VkPhysicalDeviceVulkan12Features want12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES, .pNext = &want11,
                                               .shaderFloat16 = f12.shaderFloat16};
    VkPhysicalDeviceFeatures2 want = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &want12};
    float priority = 1.0f;
    VkDeviceQueueCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, .queueFamilyIndex = ctx->queue_family,
                                  .queueCount = 1, .pQueuePriorities = &priority};
    /* A portability implementation (MoltenVK) must be told that eyecare knows it is one. */
    const char *extensions[2] = {VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME, "VK_KHR_portability_subset"};
    uint32_t n_ext = device_has_extension(ctx->physical, "VK_KHR_portability_subset") ? 2 : 1;
    VkDeviceCreateInfo di = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .pNext = &want, .queueCreateInfoCount = 1,
                             .pQueueCreateInfos = &qi, .enabledExtensionCount = n_ext, .ppEnabledExtensionNames = extensions};
    VkResult r = vkCreateDevice(ctx->physical, &di, NULL, &ctx->device);
    if (r != VK_SUCCESS) { s = ec_fail(EC_ERR_NO_DEVICE, "vkCreateDevice failed on %s (VkResult %d)", ctx->info.name, r); goto fail; }
    vkGetDeviceQueue(ctx->device, ctx->queue_family, 0, &ctx->queue);
    ctx->push_descriptor_set = vkCmdPushDescriptorSetKHR;
    if ((s = pick_memory_types(ctx))) goto fail;
    allocation_limits(ctx);

    VkCommandPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                  .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, .queueFamilyIndex = ctx->queue_family};
    VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                       .commandBufferCount = 1};
    VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    VkPipelineCacheCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
    VkQueryPoolCreateInfo qpi = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO, .queryType = VK_QUERY_TYPE_TIMESTAMP, .queryCount = 2};
    ctx->cmds = calloc(1, sizeof *ctx->cmds);
    if (!ctx->cmds) { s = ec_fail(EC_ERR_OOM, "out of host memory"); goto fail; }
    ctx->n_cmds = 1;
    if (vkCreateCommandPool(ctx->device, &pi, NULL, &ctx->command_pool) != VK_SUCCESS ||
        (cai.commandPool = ctx->command_pool, vkAllocateCommandBuffers(ctx->device, &cai, &ctx->cmds[0]) != VK_SUCCESS) ||
        vkCreateFence(ctx->device, &fi, NULL, &ctx->fence) != VK_SUCCESS ||
        vkCreatePipelineCache(ctx->device, &pci, NULL, &ctx->pipeline_cache) != VK_SUCCESS) {
        s = ec_fail(EC_ERR_DEVICE, "creating the command pool, fence or pipeline cache failed on %s", ctx->info.name);
        goto fail;
    }
    if (fam[ctx->queue_family].timestampValidBits && props.limits.timestampComputeAndGraphics)
        vkCreateQueryPool(ctx->device, &qpi, NULL, &ctx->timestamps);
    ctx->cmd = ctx->cmds[0];
    ctx->layouts = calloc((size_t)ec_kernel_count, sizeof *ctx->layouts);
    if (!ctx->layouts) { s = ec_fail(EC_ERR_OOM, "out of host memory"); goto fail; }
    if ((s = choose_submit_size(ctx))) goto fail;
    *out = ctx;
    return EC_OK;
fail:
    ec_context_destroy(ctx);
    return s;
}

void ec_context_destroy(ec_context *ctx)
{
    if (!ctx) return;
    if (ctx->device) {
        vkDeviceWaitIdle(ctx->device);
        for (ec_pipeline *p = ctx->pipelines, *n; p; p = n) { n = p->next; vkDestroyPipeline(ctx->device, p->pipeline, NULL); free(p); }
        for (int i = 0; ctx->layouts && i < ec_kernel_count; i++) {
            if (ctx->layouts[i].layout) vkDestroyPipelineLayout(ctx->device, ctx->layouts[i].layout, NULL);
            if (ctx->layouts[i].set_layout) vkDestroyDescriptorSetLayout(ctx->device, ctx->layouts[i].set_layout, NULL);
        }
        for (ec_block *b = ctx->blocks, *n; b; b = n) { n = b->next; destroy_block(ctx, b); }
        if (ctx->staging_up.block) destroy_block(ctx, ctx->staging_up.block);
        if (ctx->staging_down.block) destroy_block(ctx, ctx->staging_down.block);
        if (ctx->timestamps) vkDestroyQueryPool(ctx->device, ctx->timestamps, NULL);
        if (ctx->pipeline_cache) vkDestroyPipelineCache(ctx->device, ctx->pipeline_cache, NULL);
        if (ctx->fence) vkDestroyFence(ctx->device, ctx->fence, NULL);
        if (ctx->command_pool) vkDestroyCommandPool(ctx->device, ctx->command_pool, NULL);
        vkDestroyDevice(ctx->device, NULL);
    }
    if (ctx->messenger) vkDestroyDebugUtilsMessengerEXT(ctx->instance, ctx->messenger, NULL);
    if (ctx->instance) vkDestroyInstance(ctx->instance, NULL);
    free(ctx->layouts);
    free(ctx->cmds);
    free(ctx->pending);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
}

/* ------------------------------------------------------------------------------------------------
 * Batches */

static ec_status device_lost(ec_context *ctx)
{
    ctx->lost = 1;
    return ec_fail(EC_ERR_DEVICE, "the Vulkan device %s was lost (VK_ERROR_DEVICE_LOST: a GPU hang, a driver reset or a "
                   "watchdog ending a long submit); the work in flight is lost and this process cannot use the device again: "
                   "restart it (a long batch can be submitted in pieces with EYECARE_SUBMIT_DISPATCHES)", ctx->info.name);
}

static ec_status begin_piece(ec_context *ctx)
{
    if (ctx->piece >= ctx->n_cmds) {
        VkCommandBuffer *more = realloc(ctx->cmds, (ctx->n_cmds + 1) * sizeof *more);
        if (!more) return ec_fail(EC_ERR_OOM, "out of host memory");
        ctx->cmds = more;
        VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = ctx->command_pool,
                                           .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 1};
        if (vkAllocateCommandBuffers(ctx->device, &cai, &ctx->cmds[ctx->n_cmds]) != VK_SUCCESS)
            return ec_fail(EC_ERR_DEVICE, "vkAllocateCommandBuffers failed");
        ctx->n_cmds++;
    }
    ctx->cmd = ctx->cmds[ctx->piece];
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                   .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    if (vkBeginCommandBuffer(ctx->cmd, &bi) != VK_SUCCESS) return ec_fail(EC_ERR_DEVICE, "vkBeginCommandBuffer failed");
    ctx->piece_dispatches = 0;
    return EC_OK;
}

ec_status ec_batch_begin(ec_context *ctx)
{
    if (ctx->recording) return EC_OK;
    if (ctx->lost) return ec_fail(EC_ERR_DEVICE, "the Vulkan device %s was lost earlier; restart the process", ctx->info.name);
    ctx->piece = 0;
    EC_TRY(begin_piece(ctx));
    if (ctx->timestamps) {
        vkCmdResetQueryPool(ctx->cmd, ctx->timestamps, 0, 2);
        vkCmdWriteTimestamp(ctx->cmd, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, ctx->timestamps, 0);
    }
    ctx->recording = 1;
    ctx->dispatches = 0;
    ctx->n_pending = 0;
    ctx->batch_wrote = 0;
    return EC_OK;
}

/* Ends the piece being recorded and submits it, with the fence when it is the last one. Pieces are
 * executed in submission order; the barriers of later pieces cover the commands of earlier ones. */
static VkResult submit_piece(ec_context *ctx, int last)
{
    if (vkEndCommandBuffer(ctx->cmd) != VK_SUCCESS) return VK_ERROR_UNKNOWN;
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &ctx->cmd};
    ctx->counters.submits++;
    return vkQueueSubmit(ctx->queue, 1, &si, last ? ctx->fence : VK_NULL_HANDLE);
}

/* Called by ec_dispatch after each dispatch: once a piece holds submit_every dispatches it is submitted
 * (without waiting) and the batch goes on in a new command buffer. */
static ec_status maybe_split(ec_context *ctx)
{
    if (!ctx->submit_every || ctx->piece_dispatches < ctx->submit_every) return EC_OK;
    VkResult r = submit_piece(ctx, 0);
    if (r == VK_ERROR_DEVICE_LOST) return device_lost(ctx);
    if (r != VK_SUCCESS) return ec_fail(EC_ERR_DEVICE, "submitting a piece of the work failed on %s (VkResult %d)", ctx->info.name, r);
    ctx->piece++;
    return begin_piece(ctx);
}

ec_status ec_batch_submit(ec_context *ctx)
{
    if (!ctx->recording) return EC_OK;
    ctx->recording = 0;
    if (ctx->batch_wrote) {
        /* What the batch wrote becomes visible to the host (ec_read after the fence) and to every later batch
         * (the second scope of a barrier covers all later commands on the queue). */
        VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                              .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                              .dstAccessMask = VK_ACCESS_HOST_READ_BIT | VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                               VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
        vkCmdPipelineBarrier(ctx->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                             VK_PIPELINE_STAGE_HOST_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                             0, 1, &mb, 0, NULL, 0, NULL);
    }
    if (ctx->timestamps) vkCmdWriteTimestamp(ctx->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, ctx->timestamps, 1);
    vkResetFences(ctx->device, 1, &ctx->fence);
    VkResult r = submit_piece(ctx, 1);
    if (r == VK_SUCCESS) r = vkWaitForFences(ctx->device, 1, &ctx->fence, VK_TRUE, UINT64_MAX);
    else if (ctx->piece > 0) vkQueueWaitIdle(ctx->queue); /* earlier pieces may still run */
    ctx->n_pending = 0;
    if (r == VK_ERROR_DEVICE_LOST) return device_lost(ctx);
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
        return ec_fail(EC_ERR_OOM, "the device ran out of memory executing the work (VkResult %d)", r);
    if (r != VK_SUCCESS) return ec_fail(EC_ERR_DEVICE, "executing the work failed on %s (VkResult %d)", ctx->info.name, r);
    if (ctx->timestamps) {
        uint64_t t[2];
        if (vkGetQueryPoolResults(ctx->device, ctx->timestamps, 0, 2, sizeof t, t, sizeof t[0], VK_QUERY_RESULT_64_BIT) == VK_SUCCESS)
            ctx->last_batch_ms = (double)(t[1] - t[0]) * ctx->limits.timestampPeriod * 1e-6;
    }
    return EC_OK;
}

void ec_batch_abort(ec_context *ctx)
{
    if (!ctx->recording) return;
    vkEndCommandBuffer(ctx->cmd);
    /* Pieces already submitted run to the end before their command buffers can be reset. */
    if (ctx->piece > 0 && vkQueueWaitIdle(ctx->queue) == VK_ERROR_DEVICE_LOST) ctx->lost = 1;
    for (uint32_t i = 0; i <= ctx->piece && i < ctx->n_cmds; i++) vkResetCommandBuffer(ctx->cmds[i], 0);
    ctx->recording = 0;
    ctx->n_pending = 0;
}

/* ------------------------------------------------------------------------------------------------
 * Barriers from the ranges each command reads and writes. The accesses since the last barrier are kept;
 * a new command that reads or writes a range an earlier one wrote, or writes a range an earlier one read,
 * gets one barrier from the stages of those accesses to its own stage, and the list starts again. */

static int overlaps(const ec_access *a, const ec_access *b)
{
    return a->buffer == b->buffer && a->begin < b->end && b->begin < a->end;
}

/* Records the barrier that `accesses` (one command's) need, then adds them to the pending list. The barrier
 * covers every pending access, not only the conflicting ones, so that the list can start again empty: its
 * source is the stages and writes of everything since the last barrier, its destination every later compute
 * and transfer command. */
static ec_status track(ec_context *ctx, const ec_access *accesses, uint32_t n)
{
    int hazard = 0;
    for (uint32_t i = 0; i < n && !hazard; i++)
        for (uint32_t j = 0; j < ctx->n_pending && !hazard; j++)
            hazard = (ctx->pending[j].write || accesses[i].write) && overlaps(&accesses[i], &ctx->pending[j]);
    if (hazard) {
        VkPipelineStageFlags src = 0;
        VkAccessFlags src_access = 0;
        for (uint32_t j = 0; j < ctx->n_pending; j++) {
            const ec_access *p = &ctx->pending[j];
            src |= p->stage;
            if (p->write) src_access |= p->stage == VK_PIPELINE_STAGE_TRANSFER_BIT ? VK_ACCESS_TRANSFER_WRITE_BIT : VK_ACCESS_SHADER_WRITE_BIT;
        }
        VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER, .srcAccessMask = src_access,
                              .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                               VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
        /* Only reads pending (a write after read): an execution dependency is enough. */
        vkCmdPipelineBarrier(ctx->cmd, src, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT, 0,
                             src_access ? 1 : 0, &mb, 0, NULL, 0, NULL);
        ctx->counters.barriers++;
        ctx->n_pending = 0;
    }
    if (ctx->n_pending + n > ctx->cap_pending) {
        uint32_t cap = (ctx->n_pending + n) * 2;
        ec_access *more = realloc(ctx->pending, cap * sizeof *more);
        if (!more) return ec_fail(EC_ERR_OOM, "out of host memory");
        ctx->pending = more;
        ctx->cap_pending = cap;
    }
    memcpy(ctx->pending + ctx->n_pending, accesses, n * sizeof *accesses);
    ctx->n_pending += n;
    ctx->batch_wrote = 1;
    return EC_OK;
}

ec_status ec_fill_zero(ec_context *ctx, VkBuffer buffer, VkDeviceSize offset, VkDeviceSize size)
{
    EC_TRY(ec_batch_begin(ctx));
    ec_access a = {buffer, offset, offset + size, 1, VK_PIPELINE_STAGE_TRANSFER_BIT};
    EC_TRY(track(ctx, &a, 1));
    vkCmdFillBuffer(ctx->cmd, buffer, offset, size, 0);
    ctx->counters.fills++;
    return EC_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Pipelines and dispatch */

/* Which storage-buffer bindings a shader may write, read from its SPIR-V: those whose variable or block is
 * not decorated NonWritable (GLSL readonly). Texel buffers are read-only. Knowing it from the shader itself,
 * no table can drift from what the kernel does. */
static ec_status written_bindings(const ec_kernel_def *k, uint32_t *writes, int *reduces)
{
    const uint32_t *w = k->spirv;
    size_t n = k->spirv_bytes / 4;
    if (n < 5 || w[0] != 0x07230203u) return ec_fail(EC_ERR_DEVICE, "kernel %s: not SPIR-V", k->name);
    uint32_t bound = w[3];
    /* per id: binding + 1 (0: none), NonWritable, pointee type (for pointers), pointer type (for variables) */
    uint32_t *binding = calloc(bound, sizeof *binding), *readonly = calloc(bound, sizeof *readonly);
    uint32_t *pointee = calloc(bound, sizeof *pointee), *var_type = calloc(bound, sizeof *var_type);
    uint32_t *storage = calloc(bound, sizeof *storage);
    if (!binding || !readonly || !pointee || !var_type || !storage) {
        free(binding); free(readonly); free(pointee); free(var_type); free(storage);
        return ec_fail(EC_ERR_OOM, "out of host memory");
    }
    enum { OpTypePointer = 32, OpVariable = 59, OpDecorate = 71, OpMemberDecorate = 72, OpControlBarrier = 224,
           NonWritable = 24, Binding = 33, StorageBuffer = 12, Uniform = 2 };
    *reduces = 0;
    for (size_t i = 5; i < n;) {
        uint32_t op = w[i] & 0xffff, len = w[i] >> 16;
        if (len == 0 || i + len > n) break;
        if (op == OpControlBarrier) *reduces = 1; /* a workgroup reduction through shared memory (common.glsl) */
        if (op == OpDecorate && len >= 3 && w[i + 1] < bound) {
            if (w[i + 2] == Binding && len >= 4) binding[w[i + 1]] = w[i + 3] + 1;
            if (w[i + 2] == NonWritable) readonly[w[i + 1]] = 1;
        } else if (op == OpMemberDecorate && len >= 4 && w[i + 1] < bound && w[i + 3] == NonWritable) {
            readonly[w[i + 1]] = 1;
        } else if (op == OpTypePointer && len >= 4 && w[i + 1] < bound) {
            pointee[w[i + 1]] = w[i + 3];
        } else if (op == OpVariable && len >= 4 && w[i + 2] < bound) {
            var_type[w[i + 2]] = w[i + 1];
            storage[w[i + 2]] = w[i + 3];
        }
        i += len;
    }
    *writes = 0;
    for (uint32_t id = 0; id < bound; id++) {
        if (!binding[id] || (storage[id] != StorageBuffer && storage[id] != Uniform)) continue;
        uint32_t ptr = var_type[id], block = ptr < bound ? pointee[ptr] : 0;
        int ro = readonly[id] || (block < bound && readonly[block]);
        if (!ro && binding[id] - 1 < 32 && k->bindings[binding[id] - 1] == 'S') *writes |= 1u << (binding[id] - 1);
    }
    free(binding); free(readonly); free(pointee); free(var_type); free(storage);
    return EC_OK;
}

static ec_status kernel_layout(ec_context *ctx, int kernel, ec_kernel_layout **out)
{
    ec_kernel_layout *l = &ctx->layouts[kernel];
    if (!l->layout) {
        const ec_kernel_def *k = &ec_kernels[kernel];
        VkDescriptorSetLayoutBinding b[16];
        uint32_t n = (uint32_t)strlen(k->bindings);
        for (uint32_t i = 0; i < n; i++)
            b[i] = (VkDescriptorSetLayoutBinding){.binding = i, .descriptorCount = 1, .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
                .descriptorType = k->bindings[i] == 'T' ? VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER};
        VkDescriptorSetLayoutCreateInfo dsl = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
            .flags = VK_DESCRIPTOR_SET_LAYOUT_CREATE_PUSH_DESCRIPTOR_BIT_KHR, .bindingCount = n, .pBindings = b};
        if (vkCreateDescriptorSetLayout(ctx->device, &dsl, NULL, &l->set_layout) != VK_SUCCESS)
            return ec_fail(EC_ERR_DEVICE, "creating the descriptor layout of kernel %s failed", k->name);
        VkPushConstantRange pc = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .size = k->push_size};
        VkPipelineLayoutCreateInfo pli = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, .setLayoutCount = 1,
            .pSetLayouts = &l->set_layout, .pushConstantRangeCount = k->push_size ? 1 : 0, .pPushConstantRanges = &pc};
        if (vkCreatePipelineLayout(ctx->device, &pli, NULL, &l->layout) != VK_SUCCESS)
            return ec_fail(EC_ERR_DEVICE, "creating the pipeline layout of kernel %s failed", k->name);
        l->name = k->name;
        l->bindings = k->bindings;
        EC_TRY(written_bindings(k, &l->writes, &l->reduces));
        l->push_size = k->push_size;
    }
    *out = l;
    return EC_OK;
}

ec_status ec_pipeline_get(ec_context *ctx, int kernel, const uint32_t spec[8], ec_pipeline **out)
{
    for (ec_pipeline *p = ctx->pipelines; p; p = p->next)
        if (p->kernel == kernel && memcmp(p->spec, spec, sizeof p->spec) == 0) { *out = p; return EC_OK; }
    ec_kernel_layout *l = NULL;
    EC_TRY(kernel_layout(ctx, kernel, &l));
    const ec_kernel_def *k = &ec_kernels[kernel];
    VkShaderModuleCreateInfo smi = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, .codeSize = k->spirv_bytes, .pCode = k->spirv};
    VkShaderModule module;
    if (vkCreateShaderModule(ctx->device, &smi, NULL, &module) != VK_SUCCESS)
        return ec_fail(EC_ERR_DEVICE, "creating the shader module of kernel %s failed", k->name);
    /* constants 0..7 as the kernel asked; 8 (ONE_SUBGROUP, shaders/common.glsl): the workgroup (width = constant 0)
     * is one subgroup, which only a device with a fixed subgroup size (CPU) guarantees */
    VkSpecializationMapEntry entries[9];
    uint32_t words[9];
    for (uint32_t i = 0; i < 9; i++) entries[i] = (VkSpecializationMapEntry){i, i * 4, 4};
    memcpy(words, spec, 8 * sizeof words[0]);
    words[8] = ec_cpu_shapes(ctx) && spec[0] <= ctx->info.subgroup_size;
    ec_pipeline *p = calloc(1, sizeof *p);
    if (!p) { vkDestroyShaderModule(ctx->device, module, NULL); return ec_fail(EC_ERR_OOM, "out of host memory"); }
    p->kernel = kernel;
    memcpy(p->spec, spec, sizeof p->spec);
    VkSpecializationInfo si = {.mapEntryCount = 9, .pMapEntries = entries, .dataSize = sizeof words, .pData = words};
    VkComputePipelineCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                  .module = module, .pName = "main", .pSpecializationInfo = &si},
        .layout = l->layout};
    VkResult r = vkCreateComputePipelines(ctx->device, ctx->pipeline_cache, 1, &ci, NULL, &p->pipeline);
    vkDestroyShaderModule(ctx->device, module, NULL);
    if (r != VK_SUCCESS) { free(p); return ec_fail(EC_ERR_DEVICE, "creating the pipeline of kernel %s failed (VkResult %d)", k->name, r); }
    p->next = ctx->pipelines;
    ctx->pipelines = p;
    *out = p;
    return EC_OK;
}

ec_status ec_dispatch(ec_context *ctx, ec_pipeline *p, const ec_binding *bindings, const void *push,
                      uint32_t gx, uint32_t gy, uint32_t gz)
{
    if (gx == 0 || gy == 0 || gz == 0) return EC_OK;
    uint32_t max = ctx->limits.maxComputeWorkGroupCount[0];
    if (gx > max || gy > ctx->limits.maxComputeWorkGroupCount[1] || gz > ctx->limits.maxComputeWorkGroupCount[2])
        return ec_fail(EC_ERR_ARG, "kernel %s needs %u x %u x %u workgroups, more than the device allows",
                       ec_kernels[p->kernel].name, gx, gy, gz);
    EC_TRY(ec_batch_begin(ctx));
    ec_kernel_layout *l = &ctx->layouts[p->kernel];
    uint32_t n = (uint32_t)strlen(l->bindings);
    VkWriteDescriptorSet writes[16];
    VkDescriptorBufferInfo infos[16];
    ec_access accesses[16];
    for (uint32_t i = 0; i < n; i++) {
        writes[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstBinding = i, .descriptorCount = 1};
        if (l->bindings[i] == 'T') {
            writes[i].descriptorType = VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER;
            writes[i].pTexelBufferView = &bindings[i].texel_view;
        } else {
            infos[i] = (VkDescriptorBufferInfo){bindings[i].buffer, bindings[i].offset, bindings[i].range};
            writes[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
            writes[i].pBufferInfo = &infos[i];
        }
        accesses[i] = (ec_access){bindings[i].buffer, bindings[i].offset, bindings[i].offset + bindings[i].range,
                                  (l->writes >> i) & 1, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT};
    }
    EC_TRY(track(ctx, accesses, n));
    vkCmdBindPipeline(ctx->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, p->pipeline);
    ctx->push_descriptor_set(ctx->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, l->layout, 0, n, writes);
    if (l->push_size) vkCmdPushConstants(ctx->cmd, l->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, l->push_size, push);
    vkCmdDispatch(ctx->cmd, gx, gy, gz);
    ctx->dispatches++;
    ctx->piece_dispatches++;
    ctx->counters.dispatches++;
    if (p->spec[0] > ctx->info.subgroup_size && l->reduces) ctx->counters.multi_subgroup_dispatches++;
    return maybe_split(ctx);
}
