//! Property tests of the fleet's wire format, which anyone who can write
//! to etcd controls: config values (the `# relive-format:` header and the
//! document), status values and canary records. Decoding is total (an
//! answer, never a panic), what decodes round-trips, and documents are
//! parsed within relive's limits. Bounded: small inputs, and proptest's
//! per-case timeout turns a hang into a failure.

use proptest::prelude::*;
use relive::{ConfigErrorKind, Format};
use relive_fleet::layout::{FORMAT_HEADER, decode_config, encode_config};
use relive_fleet::{AckState, Canary, Draft, FleetStatus, StatusRecord};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, timeout: 20_000, failure_persistence: None, ..ProptestConfig::default() }
}

fn any_format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Toml), Just(Format::Yaml), Just(Format::Json)]
}

/// A header line: well formed, or one of the ways it can be wrong.
fn header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any_format().prop_map(|f| format!("{FORMAT_HEADER}{}\n", f.name()).into_bytes()),
        "[ -~\t\r]{0,20}".prop_map(|name| format!("{FORMAT_HEADER}{name}\n").into_bytes()),
        Just(FORMAT_HEADER.as_bytes().to_vec()),
        Just(b"# relive-format:toml\n".to_vec()),
        Just(b"\xef\xbb\xbf# relive-format: toml\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

/// JSON-ish text: fragments of the status and canary records and of JSON
/// itself, glued at random.
fn json_soup() -> impl Strategy<Value = Vec<u8>> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"instance\"",
        "\"host\"",
        "\"config\"",
        "\"version\"",
        "\"applied_version\"",
        "\"state\"",
        "\"applied\"",
        "\"rejected\"",
        "\"error\"",
        "\"at\"",
        "\"value\"",
        "\"instances\"",
        "\"base_version\"",
        "\"percent\"",
        "\"by\"",
        "\"web-1\"",
        "\"\\u001b[2J\"",
        "\"\\ud800\"",
        "1",
        "-1",
        "256",
        "18446744073709551615",
        "18446744073709551616",
        "1e999",
        "null",
        "true",
        " ",
        "\"",
    ];
    prop::collection::vec(prop::sample::select(TOKENS), 0..200).prop_map(|parts| parts.concat().into_bytes())
}

fn status() -> impl Strategy<Value = StatusRecord> {
    let text = "[^\u{0}]{0,16}";
    (text, text, text, any::<u64>(), any::<Option<u64>>(), any::<bool>(), any::<Option<String>>(), text).prop_map(
        |(instance, host, config, version, applied_version, rejected, error, at)| StatusRecord {
            instance,
            host,
            config,
            version,
            applied_version,
            state: if rejected { AckState::Rejected } else { AckState::Applied },
            error,
            at,
            labels: Default::default(),
        },
    )
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn config_values_decode_or_say_why(header in header(), document in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut value = header;
        value.extend_from_slice(&document);
        match decode_config(&value) {
            Ok((_, doc)) => {
                prop_assert!(value.starts_with(FORMAT_HEADER.as_bytes()));
                prop_assert!(value.ends_with(doc));
            }
            Err(message) => {
                prop_assert!(!message.is_empty() && message.len() < 512, "{}", message);
                prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
            }
        }
    }

    #[test]
    fn encoded_configs_round_trip(format in any_format(), document in prop::collection::vec(any::<u8>(), 0..256)) {
        let value = encode_config(format, &document);
        prop_assert_eq!(decode_config(&value).unwrap(), (format, &document[..]));
    }

    #[test]
    fn status_and_canary_values_are_total(bytes in prop_oneof![json_soup(), prop::collection::vec(any::<u8>(), 0..256)]) {
        if let Ok(status) = StatusRecord::from_json(&bytes) {
            prop_assert_eq!(StatusRecord::from_json(&status.to_json()).unwrap(), status);
        }
        if let Ok(canary) = Canary::from_json(&bytes) {
            prop_assert_eq!(Canary::from_json(&canary.to_json()).unwrap(), canary.clone());
            let _ = canary.includes("web-1");
            if let Ok((format, document)) = decode_config(canary.value.as_bytes()) {
                let _ = Draft::new(format, document).check();
            }
        }
    }

    #[test]
    fn statuses_round_trip_and_build_a_fleet_status(statuses in prop::collection::vec(status(), 0..12), revision in any::<u64>()) {
        for status in &statuses {
            prop_assert_eq!(&StatusRecord::from_json(&status.to_json()).unwrap(), status);
        }
        let configs = statuses.iter().map(|s| (s.config.clone(), s.version, None)).collect();
        let fleet = FleetStatus::build(revision, configs, Vec::new(), statuses);
        prop_assert!(fleet.instances.iter().all(|row| row.target.is_some()));
    }
}

#[test]
fn regression_a_header_without_a_newline_is_not_quoted_into_every_status() {
    // Without a newline the whole value is the header line: on main the
    // rejection quoted it, document and all, into every instance's status.
    let value = format!("{FORMAT_HEADER}password = \"hunter2\" {}", "x".repeat(1 << 20));
    let message = decode_config(value.as_bytes()).unwrap_err();
    assert!(!message.contains("hunter2") && message.len() < 200, "{message}");
    assert!(message.contains("unknown format in header"), "{message}");
    let message = decode_config(format!("{FORMAT_HEADER}ini\nport = 1\n").as_bytes()).unwrap_err();
    assert_eq!(message, "unknown format `ini` in header (expected toml, yaml or json)");
}

proptest! {
    #![proptest_config(config(12))]

    /// A pushed document, whatever it holds, is parsed within the default
    /// limits: an alias bomb or deep nesting is a limit error, never a
    /// crash, as on every instance.
    #[test]
    fn pushed_documents_parse_within_the_limits(
        width in 1usize..1500,
        copies in 1usize..1500,
        depth in 1usize..20_000,
        deep in any::<bool>(),
    ) {
        let yaml = if deep {
            format!("a: {}{}\n", "[".repeat(depth), "]".repeat(depth))
        } else {
            let items = vec!["x"; width].join(",");
            format!("a: &a [{items}]\nb: [{}]\n", vec!["*a"; copies].join(","))
        };
        let value = encode_config(Format::Yaml, yaml.as_bytes());
        let (format, document) = decode_config(&value).unwrap();
        match Draft::new(format, document).check() {
            Ok(_) => {
                let small = if deep { depth < 64 } else { (width + 1) * copies < 1_000_000 };
                prop_assert!(small, "accepted");
            }
            Err(error) => prop_assert_eq!(error.kind(), ConfigErrorKind::Limit, "{}", error),
        }
    }
}
