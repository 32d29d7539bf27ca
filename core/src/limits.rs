//! Size and count limits of one shard state machine.
//!
//! The limits are part of the replicated state: they are stored in every
//! snapshot, so all replicas reject exactly the same commands even if their
//! local configuration differs.

use crate::error::CoreError;

/// Size and count limits that `ShardState::apply` enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of members of one group conversation.
    pub group_members_max: usize,
    /// Maximum size of one message body in bytes.
    pub body_bytes_max: usize,
    /// Number of recent client message ids remembered per
    /// (conversation, sender user, sender device) to make append retries
    /// idempotent.
    pub dedup_window_per_device: usize,
    /// Maximum length in bytes of a user, device, conversation or client
    /// message id.
    pub id_bytes_max: usize,
    /// Maximum number of users that one CreateGroup or AddMembers command may
    /// list.
    pub members_per_command_max: usize,
    /// Maximum number of devices registered per user.
    pub devices_per_user_max: usize,
    /// Maximum number of messages in one history page.
    pub history_page_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            group_members_max: 100_000,
            body_bytes_max: 65_536,
            dedup_window_per_device: 1_024,
            id_bytes_max: 128,
            members_per_command_max: 1_000,
            devices_per_user_max: 16,
            history_page_max: 1_000,
        }
    }
}

impl Limits {
    /// Checks that every limit is positive and that `members_per_command_max`
    /// does not exceed `group_members_max`.
    pub fn validate(&self) -> Result<(), CoreError> {
        let defaults = Self::default();
        let positive = [
            (
                "group_members_max",
                self.group_members_max,
                defaults.group_members_max,
            ),
            (
                "body_bytes_max",
                self.body_bytes_max,
                defaults.body_bytes_max,
            ),
            (
                "dedup_window_per_device",
                self.dedup_window_per_device,
                defaults.dedup_window_per_device,
            ),
            ("id_bytes_max", self.id_bytes_max, defaults.id_bytes_max),
            (
                "members_per_command_max",
                self.members_per_command_max,
                defaults.members_per_command_max,
            ),
            (
                "devices_per_user_max",
                self.devices_per_user_max,
                defaults.devices_per_user_max,
            ),
            (
                "history_page_max",
                self.history_page_max,
                defaults.history_page_max,
            ),
        ];
        for (field, value, default) in positive {
            if value == 0 {
                return Err(CoreError::InvalidLimit {
                    field,
                    value: 0,
                    requirement: format!("must be greater than 0 (the default is {default})"),
                });
            }
        }

        if self.members_per_command_max > self.group_members_max {
            return Err(CoreError::InvalidLimit {
                field: "members_per_command_max",
                value: widen(self.members_per_command_max),
                requirement: format!(
                    "must not exceed group_members_max = {}; lower it or raise group_members_max",
                    self.group_members_max
                ),
            });
        }

        Ok(())
    }
}

/// Converts a count to u64. Every supported target has `usize` of at most 64
/// bits, so the fallback never happens.
pub(crate) fn widen(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn zero_limit_is_rejected_by_name() {
        let limits = Limits {
            dedup_window_per_device: 0,
            ..Limits::default()
        };

        let message = match limits.validate() {
            Err(error) => error.to_string(),
            Ok(()) => panic!("a zero dedup_window_per_device must be rejected"),
        };

        assert!(message.contains("dedup_window_per_device = 0"), "{message}");
        assert!(message.contains("greater than 0"), "{message}");
    }

    #[test]
    fn try_new_rejects_invalid_limits() {
        let limits = Limits {
            history_page_max: 0,
            ..Limits::default()
        };

        let result = crate::ShardState::try_new(limits);

        assert!(matches!(
            result,
            Err(CoreError::InvalidLimit {
                field: "history_page_max",
                ..
            })
        ));
    }

    #[test]
    fn members_per_command_above_group_max_is_rejected() {
        let limits = Limits {
            group_members_max: 10,
            members_per_command_max: 11,
            ..Limits::default()
        };

        let message = match limits.validate() {
            Err(error) => error.to_string(),
            Ok(()) => panic!("members_per_command_max above group_members_max must be rejected"),
        };

        assert!(
            message.contains("members_per_command_max = 11"),
            "{message}"
        );
        assert!(message.contains("group_members_max = 10"), "{message}");
    }
}
