//! The `(trellis.method)` option of `trellis/options.proto` reaches the
//! generated descriptors: timeout, attempts, hedge and hash key.

use std::time::Duration;

use trellis::codegen::prost::Message;
use trellis::codegen::prost_types;
use trellis::{HashKeyField, HashKeyKind, HedgePolicy, MethodPolicy};
use trellis_tests::proto::trellis::test::echo::v1::ECHO_DESCRIPTOR;
use trellis_tests::proto::trellis::test::policy::v1::ACCOUNTS_DESCRIPTOR;

fn policy(method: &str) -> MethodPolicy {
    let path = format!("/trellis.test.policy.v1.Accounts/{method}");
    *ACCOUNTS_DESCRIPTOR.method_by_path(&path).unwrap_or_else(|| panic!("no method {path}")).policy()
}

#[test]
fn every_field_of_the_aggregate_option_is_generated() {
    let policy = policy("GetAccount");
    assert_eq!(policy.timeout(), Some(Duration::from_secs(2)));
    assert_eq!(policy.max_attempts(), 5);
    assert_eq!(policy.hedge(), Some(HedgePolicy::new(Duration::from_millis(50), 3)));
    let key = policy.hash_key().expect("hash key");
    assert_eq!((key.name(), key.number(), key.kind()), ("account_id", 3, HashKeyKind::Bytes));
}

#[test]
fn options_set_field_by_field_are_generated() {
    assert_eq!(
        policy("Rename"),
        MethodPolicy::DEFAULT
            .with_timeout(Duration::from_secs(90))
            .with_max_attempts(1)
            .with_hash_key(HashKeyField::new("shard", 1, HashKeyKind::Varint { zigzag: true }))
    );
}

#[test]
fn unset_fields_keep_their_defaults() {
    let refresh = policy("Refresh");
    assert_eq!((refresh.timeout(), refresh.max_attempts()), (None, 3));
    assert_eq!(refresh.hedge(), Some(HedgePolicy::new(Duration::from_micros(1500), 2)));
    assert_eq!(refresh.hash_key(), Some(HashKeyField::new("token", 4, HashKeyKind::Bytes)));

    let watch = policy("Watch").hash_key().expect("hash key");
    assert_eq!((watch.number(), watch.kind(), watch.kind().wire_type()), (9, HashKeyKind::Fixed64, 1));

    assert_eq!(policy("Audit"), MethodPolicy::DEFAULT);
    assert_eq!(policy("Close"), MethodPolicy::DEFAULT);
    assert!(ECHO_DESCRIPTOR.methods().iter().all(|m| *m.policy() == MethodPolicy::DEFAULT));
}

#[test]
fn the_options_proto_is_served_but_not_generated() {
    let set =
        prost_types::FileDescriptorSet::decode(ACCOUNTS_DESCRIPTOR.file_descriptor_set()).expect("decodes");
    let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
    for expected in ["trellis/options.proto", "google/protobuf/descriptor.proto"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    let generated = include_str!(concat!(env!("OUT_DIR"), "/", "trellis_protos.rs"));
    assert!(!generated.contains("\"trellis.rs\""), "{generated}");
}
