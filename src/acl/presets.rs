//! The shipped presets (SPEC §3), embedded from `presets/` so `coremq acl presets` and the
//! `preset:` policy references work without files.

/// (name, one-line use case, document).
pub const PRESETS: [(&str, &str, &str); 5] = [
    (
        "permit-all",
        "allow everything (trusted single-tenant set-ups, the embedded default's org)",
        include_str!("../../presets/permit-all.json"),
    ),
    (
        "blank",
        "deny everything until rules are added (a declared org without a policy)",
        include_str!("../../presets/blank.json"),
    ),
    (
        "notifications",
        "each identity reads notifications/{user_id}/# and broadcast/#; the notifier role publishes there",
        include_str!("../../presets/notifications.json"),
    ),
    (
        "agent-pipelines",
        "agents write their own subtree and read their inbox; an orchestrator reads all and writes inboxes",
        include_str!("../../presets/agent-pipelines.json"),
    ),
    (
        "chat-channels",
        "members chat on chat/+/messages (QoS <= 1), presence per user, moderators, private direct messages",
        include_str!("../../presets/chat-channels.json"),
    ),
];

/// The document of preset `name`.
pub fn get(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|p| p.0 == name).map(|p| p.2)
}
