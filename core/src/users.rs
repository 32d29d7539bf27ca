//! RegisterUser and RegisterDevice: the users homed on this shard and their
//! devices.
//!
//! Invariants: registration is idempotent, and a user never has more than
//! `Limits::devices_per_user_max` devices.

use std::collections::BTreeSet;

use crate::ids::{check_id, quote};
use crate::proto::command_result::Outcome;
use crate::proto::{RegisterDevice, RegisterUser, Registered, Rejection, RejectionCode};
use crate::rejection::reject;
use crate::state::ShardState;

impl ShardState {
    pub(crate) fn register_user(&mut self, command: &RegisterUser) -> Result<Outcome, Rejection> {
        check_id("register_user.user_id", &command.user_id, &self.limits)?;

        let already_existed = self.users.contains_key(&command.user_id);
        if !already_existed {
            self.users.insert(command.user_id.clone(), BTreeSet::new());
        }

        Ok(Outcome::Registered(Registered { already_existed }))
    }

    pub(crate) fn register_device(
        &mut self,
        command: &RegisterDevice,
    ) -> Result<Outcome, Rejection> {
        check_id("register_device.user_id", &command.user_id, &self.limits)?;
        check_id(
            "register_device.device_id",
            &command.device_id,
            &self.limits,
        )?;

        let devices_max = self.limits.devices_per_user_max;
        let Some(devices) = self.users.get_mut(&command.user_id) else {
            return Err(reject(
                RejectionCode::UnknownUser,
                format!(
                    "unknown user {} on this shard; register the user with RegisterUser \
                     before registering device {}",
                    quote(&command.user_id),
                    quote(&command.device_id)
                ),
            ));
        };

        if devices.contains(&command.device_id) {
            return Ok(Outcome::Registered(Registered {
                already_existed: true,
            }));
        }

        if devices.len() >= devices_max {
            return Err(reject(
                RejectionCode::DeviceLimit,
                format!(
                    "device {} was not registered because user {} already has \
                     devices_per_user_max {devices_max} devices; reuse one of the user's \
                     registered device ids",
                    quote(&command.device_id),
                    quote(&command.user_id)
                ),
            ));
        }

        devices.insert(command.device_id.clone());
        Ok(Outcome::Registered(Registered {
            already_existed: false,
        }))
    }
}
