//! The A/B system slots: which slot boots, the boot-once trial of a freshly installed slot,
//! and the boot loader files that express it. Pure: the appliance persists [`SlotState`] on
//! its data partition and writes [`boot_files`] to the ESP.
//!
//! Update: [`begin_trial`] marks the other slot for one trial boot, expressed as boot-once
//! records ([`boot_once_files`]: GRUB's grubenv, SYSLINUX's ADV) that the boot loader clears
//! before it boots the trial with `godwit.trial=1`; the loaders' defaults stay on the active
//! slot, so a trial that dies anywhere (even a kernel panic before init) comes back to the
//! known-good system at the next reset. On the trial boot [`after_boot`] records the test, then
//! the health check decides: [`after_health`] commits the new slot or records the rollback.

use crate::{Error, Result, bootonce};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" => Some(Slot::A),
            "B" => Some(Slot::B),
            _ => None,
        }
    }
}

/// Persisted slot state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// The known-good slot.
    pub active: Slot,
    /// A slot installed and armed for one trial boot.
    pub trial: Option<Slot>,
    /// A slot being tried on this boot, awaiting its health check.
    pub testing: Option<Slot>,
    /// What happened to the last update, for the console and the wizard.
    pub last_result: Option<String>,
}

impl Default for SlotState {
    fn default() -> Self {
        SlotState {
            active: Slot::A,
            trial: None,
            testing: None,
            last_result: None,
        }
    }
}

/// Kernel arguments every slot boots with (serial last: it becomes /dev/console).
pub const KERNEL_ARGS: &str = "console=tty0 console=ttyS0,115200 quiet panic=10";

/// Boot loader files for a state: (`/boot/grub/slot.cfg`, `/boot/syslinux/syslinux.cfg`).
/// Both always boot the committed slot; a trial is armed separately with a boot-once record
/// ([`once`], [`boot_once_files`]) that the loader clears before it boots the trial, so a
/// trial that dies before userspace falls back by itself.
pub fn boot_files(state: &SlotState) -> (String, String) {
    let s = state.active.name();
    let grub = format!("set slot={s}\n");
    let mut syslinux = format!(
        "SERIAL 0 115200\nDEFAULT godwit\nTIMEOUT 0\nPROMPT 0\nLABEL godwit\n  LINUX /{s}/vmlinuz\n  \
         INITRD /{s}/initrd.img\n  APPEND {KERNEL_ARGS} godwit.slot={s}\n"
    );
    for t in [Slot::A, Slot::B] {
        let t = t.name();
        syslinux.push_str(&format!(
            "LABEL {}\n  LINUX /{t}/vmlinuz\n  INITRD /{t}/initrd.img\n  APPEND {KERNEL_ARGS} godwit.slot={t} godwit.trial=1\n",
            trial_label(t)
        ));
    }
    (grub, syslinux)
}

fn trial_label(slot: &str) -> String {
    format!("trial-{slot}")
}

/// The slot to boot once (as a trial) on the next boot.
pub fn once(state: &SlotState) -> Option<Slot> {
    state.trial
}

/// Boot-once records for a state: (`/boot/grub/grubenv`, the ADV at the end of
/// `/boot/syslinux/ldlinux.sys`), both empty when no trial is armed.
pub fn boot_once_files(
    state: &SlotState,
) -> Result<([u8; bootonce::GRUBENV_LEN], [u8; bootonce::ADV_LEN])> {
    let slot = once(state).map(Slot::name);
    let vars: Vec<(&str, &str)> = slot
        .map(|s| vec![(bootonce::GRUB_ONCE_VAR, s)])
        .unwrap_or_default();
    let label = slot.map(trial_label);
    Ok((
        bootonce::grubenv_encode(&vars)?,
        bootonce::adv_encode(label.as_deref())?,
    ))
}

/// The GRUB main configuration: the committed slot from `slot.cfg`; a slot named in the
/// environment block is booted once as a trial, only after clearing it succeeded.
pub fn grub_cfg() -> String {
    format!(
        "set timeout=0\nserial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n\
         source /boot/grub/slot.cfg\nset godwit_trial=\n\
         load_env --file /boot/grub/grubenv {once}\n\
         if [ -n \"${once}\" ]; then\n  set once_slot=${once}\n  set {once}=\n  \
         if save_env --file /boot/grub/grubenv {once}; then\n    set slot=$once_slot\n    set godwit_trial=godwit.trial=1\n  fi\nfi\n\
         menuentry \"Godwit $slot\" {{\n  linux /$slot/vmlinuz {KERNEL_ARGS} godwit.slot=$slot $godwit_trial\n  \
         initrd /$slot/initrd.img\n}}\n",
        once = bootonce::GRUB_ONCE_VAR
    )
}

/// Which slot the kernel command line says booted, and whether it is a trial boot.
pub fn from_cmdline(cmdline: &str) -> (Option<Slot>, bool) {
    let mut slot = None;
    let mut trial = false;
    for w in cmdline.split_whitespace() {
        if let Some(s) = w.strip_prefix("godwit.slot=") {
            slot = Slot::parse(s);
        } else if w == "godwit.trial=1" {
            trial = true;
        }
    }
    (slot, trial)
}

/// Arm the inactive slot (already filled with a verified bundle) for one trial boot.
pub fn begin_trial(state: &SlotState) -> Result<(SlotState, Slot)> {
    if state.trial.is_some() || state.testing.is_some() {
        return Err(Error::invalid(
            "update",
            "another update is waiting for its trial boot",
        ));
    }
    let target = state.active.other();
    Ok((
        SlotState {
            trial: Some(target),
            ..state.clone()
        },
        target,
    ))
}

/// The slot the update writes into (the inactive one).
pub fn target_slot(state: &SlotState) -> Slot {
    state.active.other()
}

/// What this boot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootKind {
    Normal,
    /// Trial of a new slot: run the health check, then [`after_health`].
    Trial(Slot),
}

/// State to persist (and boot files to write) as soon as the system is up.
pub fn after_boot(
    state: &SlotState,
    booted: Option<Slot>,
    trial_flag: bool,
) -> (SlotState, BootKind) {
    match (state.trial, booted) {
        (Some(t), Some(b)) if trial_flag && t == b => (
            SlotState {
                trial: None,
                testing: Some(t),
                ..state.clone()
            },
            BootKind::Trial(t),
        ),
        (Some(t), _) => (
            SlotState {
                trial: None,
                testing: None,
                last_result: Some(format!(
                    "slot {} did not come up; still running slot {}",
                    t.name(),
                    state.active.name()
                )),
                ..state.clone()
            },
            BootKind::Normal,
        ),
        (None, _) if state.testing.is_some() => {
            let t = state.testing.map(Slot::name).unwrap_or("?");
            (
                SlotState {
                    testing: None,
                    last_result: Some(format!(
                        "slot {t} failed before its health check; rolled back to slot {}",
                        state.active.name()
                    )),
                    ..state.clone()
                },
                BootKind::Normal,
            )
        }
        _ => (state.clone(), BootKind::Normal),
    }
}

/// Outcome of the trial boot's health check. Healthy: the slot becomes active. Not: the
/// active slot stays (the boot loaders already point at it) and the caller reboots.
pub fn after_health(state: &SlotState, slot: Slot, healthy: bool, detail: &str) -> SlotState {
    if healthy {
        SlotState {
            active: slot,
            trial: None,
            testing: None,
            last_result: Some(format!("slot {} committed: {detail}", slot.name())),
        }
    } else {
        SlotState {
            trial: None,
            testing: None,
            last_result: Some(format!(
                "slot {} failed its health check ({detail}); rolled back to slot {}",
                slot.name(),
                state.active.name()
            )),
            ..state.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_commits_when_healthy() {
        let s = SlotState::default();
        let (armed, target) = begin_trial(&s).unwrap();
        assert_eq!(target, Slot::B);
        // The loaders still default to A; B is booted once through the boot-once records.
        let (grub, sys) = boot_files(&armed);
        assert_eq!(grub, "set slot=A\n");
        assert!(
            sys.contains("DEFAULT godwit\n") && sys.contains("LABEL godwit\n  LINUX /A/vmlinuz")
        );
        assert!(sys.contains("LABEL trial-B\n  LINUX /B/vmlinuz"));
        assert!(sys.contains("godwit.slot=B godwit.trial=1"));
        let (env, adv) = boot_once_files(&armed).unwrap();
        assert_eq!(
            bootonce::grubenv_parse(&env).unwrap(),
            vec![("godwit_once".to_string(), "B".to_string())]
        );
        assert_eq!(
            bootonce::adv_boot_once(&adv).unwrap().as_deref(),
            Some("trial-B")
        );
        assert!(begin_trial(&armed).is_err(), "one update at a time");
        let (cmd_slot, trial) =
            from_cmdline(&format!("{KERNEL_ARGS} godwit.slot=B godwit.trial=1"));
        let (testing, kind) = after_boot(&armed, cmd_slot, trial);
        assert_eq!(kind, BootKind::Trial(Slot::B));
        // No boot-once record while B is tested: any reset returns to A.
        let (env, adv) = boot_once_files(&testing).unwrap();
        assert!(bootonce::grubenv_parse(&env).unwrap().is_empty());
        assert_eq!(bootonce::adv_boot_once(&adv).unwrap(), None);
        let done = after_health(&testing, Slot::B, true, "setup page answered");
        assert_eq!(done.active, Slot::B);
        assert_eq!(boot_files(&done).0, "set slot=B\n");
        assert!(
            boot_files(&done)
                .1
                .contains("LABEL godwit\n  LINUX /B/vmlinuz")
        );
    }

    #[test]
    fn unhealthy_or_lost_trials_roll_back() {
        let (armed, _) = begin_trial(&SlotState::default()).unwrap();
        let (testing, _) = after_boot(&armed, Some(Slot::B), true);
        let back = after_health(&testing, Slot::B, false, "no network");
        assert_eq!(back.active, Slot::A);
        assert!(back.last_result.unwrap().contains("rolled back to slot A"));
        // The trial slot crashed after disarming: the next boot (A) records it.
        let (after, kind) = after_boot(&testing, Some(Slot::A), false);
        assert_eq!(kind, BootKind::Normal);
        assert_eq!(after.active, Slot::A);
        assert!(after.testing.is_none() && after.last_result.unwrap().contains("failed before"));
        // Booted A although B was armed.
        let (after, _) = after_boot(&armed, Some(Slot::A), false);
        assert!(after.trial.is_none() && after.last_result.unwrap().contains("did not come up"));
    }

    #[test]
    fn cmdline() {
        assert_eq!(from_cmdline("quiet godwit.slot=A"), (Some(Slot::A), false));
        assert_eq!(from_cmdline("godwit.slot=C"), (None, false));
        let g = grub_cfg();
        assert!(g.contains("source /boot/grub/slot.cfg"));
        // The trial only boots once the record is cleared.
        let clear = g
            .find("if save_env --file /boot/grub/grubenv godwit_once")
            .unwrap();
        assert!(clear < g.find("set godwit_trial=godwit.trial=1").unwrap());
    }
}
