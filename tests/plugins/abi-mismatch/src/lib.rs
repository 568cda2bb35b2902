//! A plugin built against "another" mq-plugin: its root module has the
//! same name but another layout (a field changed type, fields missing).
//! mq-host must refuse it with an ABI layout mismatch, before running it.

use abi_stable::{
    export_root_module, library::RootModule, package_version_strings, prefix_type::PrefixTypeTrait,
    sabi_types::VersionStrings, std_types::RStr, StableAbi,
};

/// The incompatible root module.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Same as mq-plugin's.
    pub name: RStr<'static>,
    /// mq-plugin has a `u32` here.
    #[sabi(last_prefix_field)]
    pub framework_abi: u64,
}

impl RootModule for PluginModuleRef {
    abi_stable::declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "mq_plugin";
    const NAME: &'static str = "mq_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

#[export_root_module]
fn root_module() -> PluginModuleRef {
    PluginModule {
        name: RStr::from_str("abi-mismatch"),
        framework_abi: 1,
    }
    .leak_into_prefix()
}

/// The right API version: only the ABI check can catch this plugin.
#[no_mangle]
pub extern "C" fn mq_version() -> i32 {
    1
}
