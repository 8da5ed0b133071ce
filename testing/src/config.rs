//! Fake host configurations the integration tests share.

use xbb::host::MediumInfo;
use xbb::units::Sectors;

use crate::host::FakeConfig;

impl FakeConfig {
    /// The default configuration (a writable, flushable medium of 512-byte
    /// sectors) with a medium of `sectors` sectors.
    pub fn with_sectors(sectors: u64) -> FakeConfig {
        let d = FakeConfig::default();
        FakeConfig {
            medium: MediumInfo {
                sectors: Sectors(sectors),
                ..d.medium
            },
            ..d
        }
    }
}
