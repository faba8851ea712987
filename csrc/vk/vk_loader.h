/* Vulkan entry points loaded at run time with dlopen, so that `import eyecare` works on a machine
 * without the Vulkan loader and the first use explains what to install instead of failing to link. */
#ifndef EC_VK_LOADER_H
#define EC_VK_LOADER_H

#ifndef VK_NO_PROTOTYPES
#define VK_NO_PROTOTYPES
#endif
#include <vulkan/vulkan.h>

#include "errors.h"

#define EC_VK_GLOBAL_FUNCS(X) \
    X(vkCreateInstance) X(vkEnumerateInstanceLayerProperties) X(vkEnumerateInstanceExtensionProperties) \
    X(vkEnumerateInstanceVersion)

#define EC_VK_INSTANCE_FUNCS(X) \
    X(vkDestroyInstance) X(vkEnumeratePhysicalDevices) X(vkGetPhysicalDeviceProperties) \
    X(vkGetPhysicalDeviceProperties2) X(vkGetPhysicalDeviceMemoryProperties) \
    X(vkGetPhysicalDeviceQueueFamilyProperties) X(vkEnumerateDeviceExtensionProperties) \
    X(vkGetPhysicalDeviceFeatures2) \
    X(vkCreateDevice) X(vkDestroyDevice) X(vkGetDeviceQueue) X(vkCreateDebugUtilsMessengerEXT) \
    X(vkDestroyDebugUtilsMessengerEXT) X(vkAllocateMemory) X(vkFreeMemory) X(vkMapMemory) \
    X(vkUnmapMemory) X(vkCreateBuffer) X(vkDestroyBuffer) X(vkGetBufferMemoryRequirements) \
    X(vkBindBufferMemory) X(vkCreateBufferView) X(vkDestroyBufferView) X(vkCreateShaderModule) \
    X(vkDestroyShaderModule) X(vkCreatePipelineCache) X(vkDestroyPipelineCache) \
    X(vkCreateComputePipelines) X(vkDestroyPipeline) X(vkCreatePipelineLayout) \
    X(vkDestroyPipelineLayout) X(vkCreateDescriptorSetLayout) X(vkDestroyDescriptorSetLayout) \
    X(vkCreateCommandPool) X(vkDestroyCommandPool) X(vkAllocateCommandBuffers) \
    X(vkBeginCommandBuffer) X(vkEndCommandBuffer) X(vkResetCommandBuffer) X(vkCmdBindPipeline) \
    X(vkCmdPushConstants) X(vkCmdDispatch) X(vkCmdPipelineBarrier) X(vkCmdCopyBuffer) \
    X(vkCmdFillBuffer) X(vkCmdWriteTimestamp) X(vkCmdResetQueryPool) X(vkCreateQueryPool) \
    X(vkDestroyQueryPool) X(vkGetQueryPoolResults) X(vkCreateFence) X(vkDestroyFence) \
    X(vkResetFences) X(vkWaitForFences) X(vkQueueSubmit) X(vkDeviceWaitIdle) X(vkQueueWaitIdle) \
    X(vkInvalidateMappedMemoryRanges) \
    X(vkCmdPushDescriptorSetKHR)

#define EC_VK_DECLARE(name) extern PFN_##name name;
EC_VK_GLOBAL_FUNCS(EC_VK_DECLARE)
EC_VK_INSTANCE_FUNCS(EC_VK_DECLARE)
#undef EC_VK_DECLARE

/* Opens libvulkan and loads the global entry points (once). */
ec_status ec_vk_load(void);
/* Loads the instance-level entry points (they dispatch to any device of that instance). */
void ec_vk_load_instance(VkInstance instance);

#endif
