#include "vk/vk_loader.h"

#include <dlfcn.h>
#include <stddef.h>

#define EC_VK_DEFINE(name) PFN_##name name;
EC_VK_GLOBAL_FUNCS(EC_VK_DEFINE)
EC_VK_INSTANCE_FUNCS(EC_VK_DEFINE)
#undef EC_VK_DEFINE

static void *library;
static PFN_vkGetInstanceProcAddr get_instance_proc;

ec_status ec_vk_load(void)
{
    if (get_instance_proc)
        return EC_OK;
    const char *names[] = {"libvulkan.so.1", "libvulkan.so", "libvulkan.1.dylib", "libMoltenVK.dylib"};
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !library; i++)
        library = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!library)
        return ec_fail(EC_ERR_NO_DEVICE,
                       "the Vulkan loader (libvulkan.so.1) is not installed; on Debian/Ubuntu run "
                       "'apt-get install libvulkan1 mesa-vulkan-drivers' (mesa-vulkan-drivers gives "
                       "lavapipe, a Vulkan driver that runs on the CPU)");
    get_instance_proc = (PFN_vkGetInstanceProcAddr)dlsym(library, "vkGetInstanceProcAddr");
    if (!get_instance_proc)
        return ec_fail(EC_ERR_NO_DEVICE, "libvulkan has no vkGetInstanceProcAddr; reinstall libvulkan1");
#define EC_VK_LOAD_GLOBAL(name) name = (PFN_##name)get_instance_proc(NULL, #name);
    EC_VK_GLOBAL_FUNCS(EC_VK_LOAD_GLOBAL)
#undef EC_VK_LOAD_GLOBAL
    return EC_OK;
}

void ec_vk_load_instance(VkInstance instance)
{
#define EC_VK_LOAD_INSTANCE(name) name = (PFN_##name)get_instance_proc(instance, #name);
    EC_VK_INSTANCE_FUNCS(EC_VK_LOAD_INSTANCE)
#undef EC_VK_LOAD_INSTANCE
}
