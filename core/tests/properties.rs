//! Invariants of the LR schedule, the scheduler and the replay parser on
//! generated input: no panic, and either a result within bounds or an error.

use adanoise_core::lr_schedule::CosineRestartsConfig;
use adanoise_core::replay::parse_observations;
use adanoise_core::scheduler::{NoiseScheduler, NoiseSchedulerConfig, Observation};
use proptest::prelude::*;

fn schedule() -> impl Strategy<Value = CosineRestartsConfig> {
    (
        1e-6f64..1.0,
        0.0f64..1.0,
        0.0f64..1.0,
        1u64..400,
        1u64..120,
        prop_oneof![Just(1.0), 1.0f64..3.0],
        1u64..500,
    )
        .prop_map(
            |(lr_max, final_frac, min_frac, schedule_epochs, restart_epochs, t_mult, steps)| {
                let lr_min = lr_max * min_frac * 0.5;
                CosineRestartsConfig {
                    lr_max,
                    lr_final_max: lr_min + final_frac * (lr_max - lr_min),
                    lr_min,
                    schedule_epochs,
                    restart_epochs,
                    t_mult,
                    steps_per_epoch: steps,
                }
            },
        )
}

proptest! {
    #[test]
    fn lr_is_finite_and_within_its_bounds(config in schedule(), fraction in 0.0f64..1.0) {
        prop_assert!(config.validate().is_ok(), "{config:?}");
        let total = config.schedule_epochs * config.steps_per_epoch;
        let step = ((total - 1) as f64 * fraction) as u64;
        let lr = config.lr_at(step);
        prop_assert!(lr.is_finite());
        prop_assert!(lr >= config.lr_min * (1.0 - 1e-12), "{lr} < {}", config.lr_min);
        prop_assert!(lr <= config.lr_max * (1.0 + 1e-12), "{lr} > {}", config.lr_max);
    }

    #[test]
    fn any_schedule_parameters_validate_or_explain(
        lr_max in proptest::num::f64::ANY,
        lr_final_max in proptest::num::f64::ANY,
        lr_min in proptest::num::f64::ANY,
        schedule_epochs in any::<u64>(),
        restart_epochs in any::<u64>(),
        t_mult in proptest::num::f64::ANY,
        steps_per_epoch in any::<u64>(),
    ) {
        let config = CosineRestartsConfig {
            lr_max, lr_final_max, lr_min, schedule_epochs, restart_epochs, t_mult, steps_per_epoch,
        };
        match config.validate() {
            Ok(()) => {
                let lr = config.lr_at(0);
                prop_assert!(lr.is_finite() && lr >= 0.0, "{config:?}: {lr}");
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn sigmas_stay_within_bounds_and_cooldowns_are_bounded(
        metrics in prop::collection::vec((0.0f64..10.0, 0.0f64..10.0, 0.0f64..10.0, 0.0f64..0.1), 1..80),
        window in 1u64..6,
        min_epochs in 0u64..10,
        trigger in 1u64..5,
        sigma_max in 0.0f64..1.0,
    ) {
        let config = NoiseSchedulerConfig {
            min_epochs_before_flag: min_epochs,
            flag_window: window,
            consecutive_trigger: trigger,
            sigma_min: sigma_max / 2.0,
            sigma_max,
            ..Default::default()
        };
        let mut scheduler = NoiseScheduler::new(config, metrics.len() as u64).unwrap();
        for (i, (train, val, grad, update)) in metrics.into_iter().enumerate() {
            let d = scheduler.observe(Observation {
                epoch: i as u64 + 1,
                train_loss: train,
                val_loss: val,
                grad_norm: grad,
                weight_update: update,
            }).unwrap();
            for sigma in [d.grad_sigma, d.weight_sigma] {
                prop_assert!((0.0..=sigma_max).contains(&sigma), "{d:?}");
            }
            prop_assert!(d.cooldown as f64 <= config.cooldown_max.round(), "{d:?}");
            prop_assert!(d.cooldown == 0 || !d.injects(), "{d:?}");
        }
    }

    #[test]
    fn the_replay_parser_never_panics(text in ".{0,400}") {
        let _ = parse_observations(&text, "generated");
    }

    #[test]
    fn the_replay_parser_reads_what_it_is_given(
        rows in prop::collection::vec((0.0f64..1e3, 0.0f64..1e3, 0.0f64..1e3, 0.0f64..1.0), 1..20),
    ) {
        let text: Vec<String> = rows.iter().enumerate().map(|(i, (a, b, c, d))| {
            format!(r#"{{"epoch": {}, "train_loss": {a}, "val_loss": {b}, "grad_norm": {c}, "weight_update": {d}}}"#, i + 1)
        }).collect();
        let parsed = parse_observations(&text.join("\n"), "generated").unwrap();
        prop_assert_eq!(parsed.len(), rows.len());
        for (o, (a, b, c, d)) in parsed.iter().zip(&rows) {
            prop_assert_eq!((o.train_loss, o.val_loss, o.grad_norm, o.weight_update), (*a, *b, *c, *d));
        }
    }
}
