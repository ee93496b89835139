//! The scheduler's rules on small hand-made streams.

use super::*;

fn obs(epoch: u64, train: f64, val: f64, grad: f64, update: f64) -> Observation {
    Observation {
        epoch,
        train_loss: train,
        val_loss: val,
        grad_norm: grad,
        weight_update: update,
    }
}

/// A scheduler with checks from epoch 3 on, window 2.
fn small() -> NoiseScheduler {
    let config = NoiseSchedulerConfig {
        min_epochs_before_flag: 2,
        flag_window: 2,
        overfit_epochs: 2,
        ..Default::default()
    };
    NoiseScheduler::new(config, 300).unwrap()
}

/// A healthy epoch: everything improving fast, big updates.
fn healthy(e: u64) -> Observation {
    let s = 0.5f64.powi(e as i32);
    obs(e, s, s, s, 0.1)
}

fn see(s: &mut NoiseScheduler, o: Observation) -> Decision {
    s.observe(o).unwrap()
}

#[test]
fn no_checks_before_min_epochs_and_window() {
    let mut s = small();
    for e in 1..=2 {
        let d = see(&mut s, obs(e, 1.0, 1.0, 1.0, 0.0));
        assert!(d.flags.is_empty() && !d.injects(), "epoch {e}");
    }
    assert!(!see(&mut s, obs(3, 1.0, 1.0, 1.0, 0.0)).flags.is_empty());
}

#[test]
fn each_flag_on_its_own() {
    let mut s = small();
    for e in 1..=3 {
        assert!(see(&mut s, healthy(e)).flags.is_empty());
    }
    // Gradient norm stalls.
    let mut s2 = s.clone();
    let d = see(&mut s2, obs(4, 0.0625, 0.0625, 0.25, 0.1));
    assert_eq!(d.flags, vec![Flag::GradPlateau]);
    assert!(d.grad_sigma > 0.0 && d.weight_sigma == 0.0);
    // Weight updates tiny.
    let mut s2 = s.clone();
    let d = see(&mut s2, obs(4, 0.0625, 0.0625, 0.0625, 0.0));
    // Mean of the last two updates: (0.1 + 0) / 2 = 0.05, not below 5e-4.
    assert!(d.flags.is_empty());
    let d = see(&mut s2, obs(5, 0.03, 0.03, 0.03, 0.0));
    assert_eq!(d.flags, vec![Flag::LowWeightUpdate]);
    assert!(d.grad_sigma > 0.0);
    // Validation loss stalls.
    let mut s2 = s.clone();
    let d = see(&mut s2, obs(4, 0.0625, 0.25, 0.0625, 0.1));
    assert_eq!(d.flags, vec![Flag::ValPlateau]);
    assert!(d.weight_sigma > 0.0 && d.grad_sigma == 0.0);
}

#[test]
fn overfit_needs_val_up_and_train_not_up_each_epoch() {
    let config = NoiseSchedulerConfig {
        min_epochs_before_flag: 0,
        flag_window: 3,
        overfit_epochs: 3,
        ..Default::default()
    };
    let vals = [1.0, 0.5, 0.6, 0.7, 0.8];
    let run = |trains: [f64; 5]| {
        let mut s = NoiseScheduler::new(config, 300).unwrap();
        let mut last = Decision::quiet(0);
        for (i, (v, t)) in vals.iter().zip(trains).enumerate() {
            // Gradient norm halves each epoch, big updates: only val-based flags can fire.
            last = see(&mut s, obs(i as u64 + 1, t, *v, 0.5f64.powi(i as i32), 0.1));
        }
        last
    };
    let last = run([1.0, 0.9, 0.8, 0.8, 0.7]);
    assert!(last.flags.contains(&Flag::Overfit), "{last:?}");
    // Train loss rising in one of the epochs breaks it.
    let last = run([1.0, 0.9, 0.8, 0.85, 0.7]);
    assert!(!last.flags.contains(&Flag::Overfit), "{last:?}");
}

#[test]
fn cooldown_after_consecutive_trigger() {
    let config = NoiseSchedulerConfig {
        min_epochs_before_flag: 0,
        flag_window: 1,
        consecutive_trigger: 3,
        cooldown_min: 2.0,
        cooldown_max: 4.0,
        ..Default::default()
    };
    let mut s = NoiseScheduler::new(config, 100).unwrap();
    see(&mut s, obs(1, 1.0, 1.0, 1.0, 1.0));
    // Flat gradient norm: I_grad = 0, F_grad = sigmoid(0.025) ~ 0.506: CD = round(2 + 0.506*2) = 3.
    let decisions: Vec<Decision> = (2..=9)
        .map(|e| see(&mut s, obs(e, 1.0, 0.5f64.powi(e as i32), 1.0, 1.0)))
        .collect();
    let pattern: Vec<(bool, u64)> = decisions
        .iter()
        .map(|d| (d.injects(), d.cooldown))
        .collect();
    assert_eq!(
        pattern,
        vec![
            (true, 0),
            (true, 0),
            (true, 0),
            (false, 3),
            (false, 2),
            (false, 1),
            (true, 0),
            (true, 0)
        ]
    );
    // Flags are still recorded during the cooldown.
    assert_eq!(decisions[3].flags, vec![Flag::GradPlateau]);
}

#[test]
fn a_decision_without_noise_resets_the_count() {
    let config = NoiseSchedulerConfig {
        min_epochs_before_flag: 0,
        flag_window: 1,
        consecutive_trigger: 2,
        ..Default::default()
    };
    let mut s = NoiseScheduler::new(config, 100).unwrap();
    see(&mut s, obs(1, 1.0, 1.0, 1.0, 1.0));
    assert!(see(&mut s, obs(2, 1.0, 0.5, 1.0, 1.0)).injects());
    assert!(!see(&mut s, obs(3, 1.0, 0.25, 0.5, 1.0)).injects()); // healthy: resets
    assert!(see(&mut s, obs(4, 1.0, 0.1, 0.5, 1.0)).injects());
    let d = see(&mut s, obs(5, 1.0, 0.05, 0.5, 1.0));
    assert!(d.injects() && d.cooldown == 0); // second in a row: injects, cooldown starts next
    assert!(see(&mut s, obs(6, 1.0, 0.01, 0.5, 1.0)).cooldown > 0);
}

#[test]
fn bad_observations_are_refused_and_leave_the_state_alone() {
    let mut s = NoiseScheduler::new(NoiseSchedulerConfig::default(), 3).unwrap();
    let before = s.clone();
    let err = s.observe(obs(2, 1.0, 1.0, 1.0, 0.1)).unwrap_err();
    assert_eq!(
        err,
        SchedulerError::EpochOrder {
            got: 2,
            expected: 1
        }
    );
    let err = s.observe(obs(1, 1.0, -1.0, 1.0, 0.1)).unwrap_err();
    assert!(err.to_string().contains("val_loss is -1"), "{err}");
    let err = s.observe(obs(1, 1.0, 1.0, f64::NAN, 0.1)).unwrap_err();
    assert!(err.to_string().contains("grad_norm is NaN"), "{err}");
    assert_eq!(s, before);
    for e in 1..=3 {
        see(&mut s, obs(e, 1.0, 1.0, 1.0, 0.1));
    }
    let err = s.observe(obs(4, 1.0, 1.0, 1.0, 0.1)).unwrap_err();
    assert!(
        err.to_string()
            .contains("past the schedule length E_max = 3"),
        "{err}"
    );
}

#[test]
fn decisions_describe_themselves() {
    let mut d = Decision::quiet(80);
    d.flags = vec![Flag::GradPlateau, Flag::LowWeightUpdate];
    d.grad_sigma = 0.0255;
    assert_eq!(
        d.describe(NoiseKind::Gaussian, &crate::PolicyConfig::default()),
        "flags grad_plateau, low_weight_update: injects grad sigma 0.0255, weight sigma 0.0000 (gaussian) next epoch"
    );
    assert!(
        d.describe(NoiseKind::None, &crate::PolicyConfig::default())
            .contains("would inject")
    );
    d.cooldown = 2;
    assert!(
        d.describe(NoiseKind::None, &crate::PolicyConfig::default())
            .contains("cooldown (2 epochs left)")
    );
    // A baseline policy follows no decision: the line must not say anything is injected.
    let constant = crate::PolicyConfig {
        policy: crate::NoisePolicy::Constant,
        ..Default::default()
    };
    let line = d.describe(NoiseKind::Gaussian, &constant);
    assert!(
        line.contains("recorded only") && !line.contains("injects"),
        "{line}"
    );
}

#[test]
fn a_saved_state_is_checked_before_it_is_used() {
    let mut s = small();
    for e in 1..=6 {
        s.observe(healthy(e)).unwrap();
    }
    s.validate_state().unwrap();
    let json = serde_json::to_value(&s).unwrap();
    let damaged = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut j = json.clone();
        edit(&mut j);
        let state: NoiseScheduler = serde_json::from_value(j).unwrap();
        state.validate_state().unwrap_err().to_string()
    };
    let err = damaged(&|j| j["schedule_epochs"] = 0.into());
    assert!(err.contains("E_max"), "{err}");
    let err = damaged(&|j| {
        j["history"].as_array_mut().unwrap().remove(0);
    });
    assert!(err.contains("keeps 2 observations"), "{err}");
    let err = damaged(&|j| j["history"][1]["epoch"] = 9.into());
    assert!(err.contains("epoch 9 where epoch 5 belongs"), "{err}");
    let err = damaged(&|j| j["history"][0]["grad_norm"] = (-1.0).into());
    assert!(err.contains("grad_norm"), "{err}");
    let err = damaged(&|j| j["cooldown_left"] = 1000.into());
    assert!(err.contains("cooldown"), "{err}");
    let err = damaged(&|j| j["config"]["flag_window"] = 0.into());
    assert!(err.contains("flag_window"), "{err}");
}
