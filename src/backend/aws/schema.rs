//! The DynamoDB table and S3 bucket, defined once.
//!
//! `standby aws-init` creates them from these definitions (for emulators and first-time
//! setups), [`DynamoIndex`](super::DynamoIndex) reads and writes items by the same names,
//! and the deployment template must declare the same keys and index.
//!
//! # Table design
//! One table, partition key `pk` (string), no sort key, on-demand capacity.
//!
//! | item | `pk` | other attributes |
//! |---|---|---|
//! | message | `msg#<id>` | `status`, `recv` (`<received ms, 13 digits>#<id>`), `due` (ms), `lease_owner`, `lease_until` (ms), `record` (JSON), `expires_at` (TTL, epoch s, set when retention allows deletion) |
//! | health | `health#<node>` | `status` = `health`, `recv` = the node, `record` (JSON: probe state, consecutive counts, last drain, reconcile watermark); one per node (`node_id`: each `standby serve`, the drain function) |
//! | recipient | `rcpt#<id>#<address>` | `rcpt` (address, lower case), `recv`; one per address of a message, kept by the index's writes |
//! | audit entry | `audit#<ulid>` | `status` = `audit`, `recv` (`<ms>#<ulid>`), `record` (JSON); never updated or deleted |
//! | continuity | `continuity` | `record` (JSON: the event under way, history, alerts owed), `cver` (its version) |
//! | mark | `mark#<key>` | `expires_at`; a notice sent for an event and user, a login link used |
//! | mailbox head | `mbox#h#<user>` | `ver`, `validity`, `next_uid`, `cv` (each chunk's version), `per` (entries a chunk): a user's IMAP/POP3 mailbox (see `DynamoMailboxes`) |
//! | mailbox chunk | `mbox#c<k>#<user>` | `e` (binary: 4,096 entries of UID, message id, flags) |
//!
//! Message items also carry `sender` (lower-case envelope sender, `<>` for none).
//!
//! GSIs `by_sender` (partition `sender`, sort `recv`, all attributes) and `by_rcpt`
//! (partition `rcpt`, sort `recv`, keys only) answer `standby list --from / --rcpt`.
//!
//! GSI `by_status`: partition `status`, sort `recv`, all attributes projected. Listing by
//! status in received order, the oldest held message, and the drain's claim candidates are
//! all one `Query` on it. GSI reads are eventually consistent, so a claim is a conditional
//! `UpdateItem` on the base table (`status = held` and no live lease): two drains can see
//! the same candidate but only one wins it.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};

pub const PK: &str = "pk";
pub const GSI: &str = "by_status";
pub const GSI_PK: &str = "status";
pub const GSI_SK: &str = "recv";
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// Health items: `pk = health#<node>`, in the status index under [`HEALTH_STATUS`] (so
/// every node's record is one Query away), sorted by node.
pub const HEALTH_PREFIX: &str = "health#";
pub const HEALTH_STATUS: &str = "health";
pub const MESSAGE_PREFIX: &str = "msg#";
/// The sender index: messages by lower-case envelope sender (`<>` for none), in list order.
pub const SENDER_GSI: &str = "by_sender";
pub const SENDER_ATTR: &str = "sender";
/// The recipient index, over recipient items `rcpt#<id>#<address>` (one per address of a
/// message, lower case), keys only.
pub const RCPT_GSI: &str = "by_rcpt";
pub const RCPT_ATTR: &str = "rcpt";
pub const RCPT_PREFIX: &str = "rcpt#";
/// Audit entries: `pk = audit#<ulid>`, in the status index under this partition.
pub const AUDIT_PREFIX: &str = "audit#";
pub const AUDIT_STATUS: &str = "audit";

/// The continuity record: one item (see `DynamoEvents`).
pub const CONTINUITY_KEY: &str = "continuity";
/// One-time marks: `pk = mark#<key>`, with a TTL.
pub const MARK_PREFIX: &str = "mark#";

/// Key schema of the table.
pub fn key_schema() -> Vec<KeySchemaElement> {
    vec![key(PK, KeyType::Hash)]
}

/// Every key attribute (table and GSI) with its type.
pub fn attribute_definitions() -> Vec<AttributeDefinition> {
    [PK, GSI_PK, GSI_SK, SENDER_ATTR, RCPT_ATTR]
        .into_iter()
        .map(|name| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("name and type are set")
        })
        .collect()
}

/// The status, sender and recipient indexes, each sorted by `recv` (list order).
pub fn global_secondary_indexes() -> Vec<GlobalSecondaryIndex> {
    let index = |name: &str, part: &str, projection: ProjectionType| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(part, KeyType::Hash))
            .key_schema(key(GSI_SK, KeyType::Range))
            .projection(Projection::builder().projection_type(projection).build())
            .build()
            .expect("name, keys and projection are set")
    };
    vec![
        index(GSI, GSI_PK, ProjectionType::All),
        index(SENDER_GSI, SENDER_ATTR, ProjectionType::All),
        index(RCPT_GSI, RCPT_ATTR, ProjectionType::KeysOnly),
    ]
}

pub fn billing_mode() -> BillingMode {
    BillingMode::PayPerRequest
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .expect("name and type are set")
}
