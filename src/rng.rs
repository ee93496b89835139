//! Seeded random streams. Every random decision of a run (subset choice, epoch
//! order, augmentation, noise) comes from a stream derived from the run seed, the
//! purpose and the epoch, so a run resumed at an epoch boundary draws exactly the
//! numbers an uninterrupted run would, with no generator state to save.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is used for; each purpose gets its own independent stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The fixed shuffle `--train-subset` takes its images from.
    TrainSubset = 1,
    /// The order of an epoch's images.
    EpochOrder = 2,
    /// Crop offsets and flips.
    Augmentation = 3,
    /// Initial weights.
    ModelInit = 4,
    /// Gradient noise (per global step).
    GradientNoise = 5,
    /// Weight noise (per epoch).
    WeightNoise = 6,
    /// The validation split (per class).
    ValidationSplit = 7,
    /// Anti-PGD's draws `xi_n` (per global step).
    AntiPgd = 8,
    /// Langevin dynamics' noise (per global step).
    Langevin = 9,
    /// Perturbed gradient descent's perturbations (per global step).
    Perturbation = 10,
    /// Label noise (per global step).
    LabelNoise = 11,
    /// Shrink and perturb's noise (per epoch).
    ShrinkPerturb = 12,
}

/// The generator for `purpose` in `epoch` of a run seeded with `seed`.
pub fn stream(seed: u64, purpose: Purpose, epoch: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((purpose as u64) << 48) ^ epoch);
    rng
}

/// Serialises the use of backend RNGs: Burn seeds a device's generator globally, so two
/// runs in one process (tests, threads) must not interleave seeding and drawing.
pub static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Seeds `device` and runs `draw` while no other code in the process can reseed it.
pub fn with_seeded_device<T>(
    device: &burn::tensor::Device,
    seed: u64,
    draw: impl FnOnce() -> T,
) -> T {
    let _guard = DEVICE_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    draw()
}

/// A 64-bit seed for backends that take one (Burn's device RNG), from the same scheme.
pub fn derived_seed(seed: u64, purpose: Purpose, epoch: u64) -> u64 {
    use rand::Rng;
    stream(seed, purpose, epoch).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a = stream(7, Purpose::Augmentation, 3).next_u64();
        assert_eq!(a, stream(7, Purpose::Augmentation, 3).next_u64());
        assert_ne!(a, stream(7, Purpose::Augmentation, 4).next_u64());
        assert_ne!(a, stream(7, Purpose::EpochOrder, 3).next_u64());
        assert_ne!(a, stream(8, Purpose::Augmentation, 3).next_u64());
    }
}
