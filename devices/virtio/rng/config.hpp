#pragma once
// The entropy device as configured (Firecracker's EntropyDevice, PUT /entropy and the config
// file's "entropy" section): plain values, independent of JSON.
//
// Firecracker's only field is `rate_limiter` (vmm_config/entropy.rs EntropyDeviceConfig). Until
// Ember's token buckets are wired to this device, the API accepts only a null or absent one, so
// nothing is stored for it here.

namespace ember {

struct EntropyConfig {
    bool operator==(const EntropyConfig&) const = default;
};

} // namespace ember
