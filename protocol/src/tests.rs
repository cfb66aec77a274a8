use proptest::prelude::*;

use super::*;

fn secret() -> SessionSecret {
    SessionSecret::new("0123456789abcdef0123456789abcdef0123456789abcdef".to_owned())
}

fn sample_login() -> AutoLogin {
    AutoLogin {
        login_id: 7,
        steps: vec![
            LoginStep::WaitForSelector {
                selector: "#user".into(),
                timeout_ms: 5000,
            },
            LoginStep::Fill {
                selector: "#user".into(),
                field: CredentialField::Username,
                timeout_ms: 5000,
            },
            LoginStep::Fill {
                selector: "#pass".into(),
                field: CredentialField::Password,
                timeout_ms: 5000,
            },
            LoginStep::Click {
                selector: "button".into(),
                timeout_ms: 5000,
            },
            LoginStep::WaitForSuccess {
                url_prefix: Some("https://bank.example/home".into()),
                selector: None,
                timeout_ms: 9000,
            },
        ],
        credentials: Credentials {
            username: "alice".into(),
            password: "<p&ss>'\"$ ".into(),
            totp: None,
        },
        allowed_origins: AllowedOrigins {
            username: vec!["https://bank.example".into()],
            password: vec!["https://bank.example".into()],
            totp: vec![],
        },
    }
}

fn sample_broker_messages() -> Vec<BrokerMessage> {
    vec![
        BrokerMessage::Auth { secret: secret() },
        BrokerMessage::Key(KeyEvent {
            code: "KeyE".into(),
            key: "€".into(),
            pressed: true,
        }),
        BrokerMessage::MouseMove { x: 10, y: 20 },
        BrokerMessage::MouseButton {
            button: MouseButton::Right,
            pressed: false,
            x: 1,
            y: 2,
        },
        BrokerMessage::Wheel {
            x: 5,
            y: 5,
            delta_x: 0.0,
            delta_y: -120.5,
        },
        BrokerMessage::Resize {
            width: 1280,
            height: 720,
            device_pixel_ratio: 1.5,
        },
        BrokerMessage::Paste {
            text: "pässwörd€ 日本 Ö{}\n\"x\"".into(),
        },
        BrokerMessage::RequestKeyframe,
        BrokerMessage::AutoLogin(sample_login()),
        BrokerMessage::End,
    ]
}

fn sample_agent_messages() -> Vec<AgentMessage> {
    vec![
        AgentMessage::Video(VideoPacket {
            pts_us: 123_456_789,
            keyframe: true,
            data: vec![1, 2, 3],
        }),
        AgentMessage::Video(VideoPacket {
            pts_us: 0,
            keyframe: false,
            data: vec![0xff; 100],
        }),
        AgentMessage::Control(AgentControl::StreamConfig {
            codec: "vp8".into(),
            width: 1280,
            height: 720,
        }),
        AgentMessage::Control(AgentControl::PlaceholderStart { login_id: 3 }),
        AgentMessage::Control(AgentControl::PlaceholderEnd { login_id: 3 }),
        AgentMessage::Control(AgentControl::UrlChanged {
            url: "https://bank.example/".into(),
        }),
        AgentMessage::Control(AgentControl::LoginStep {
            login_id: 3,
            step: 1,
            outcome: StepOutcome::OriginRejected {
                origin: "https://evil.example".into(),
            },
        }),
        AgentMessage::Control(AgentControl::LoginFinished {
            login_id: 3,
            success: false,
            reason: Some("timed out".into()),
            failed_step: Some(1),
            failure: Some(LoginFailure::Rejected),
        }),
        AgentMessage::Control(AgentControl::BrowserExited {
            code: None,
            signal: Some(9),
        }),
        AgentMessage::Control(AgentControl::ClipboardChanged {
            text: "IBAN DE89 3704 0044 0532 0130 00 – 日本".into(),
        }),
        AgentMessage::Control(AgentControl::Error {
            message: "x".into(),
        }),
        AgentMessage::Control(AgentControl::DownloadStart {
            version: DOWNLOAD_PROTOCOL_VERSION,
            download_id: 1,
            name: "Kontoauszug 2026-11 €.pdf".into(),
            size: 3,
        }),
        AgentMessage::DownloadChunk(DownloadChunk {
            download_id: 1,
            offset: 0,
            data: vec![0, 0xff, 7],
        }),
        AgentMessage::Control(AgentControl::DownloadEnd {
            download_id: 1,
            sha256: "ab".repeat(32),
        }),
        AgentMessage::Control(AgentControl::DownloadRefused {
            name: "big.bin".into(),
            size: Some(1 << 40),
            reason: "larger than the cap".into(),
        }),
    ]
}

#[test]
fn broker_messages_round_trip() {
    for message in sample_broker_messages() {
        let encoded = encode_broker_message(&message);
        assert_eq!(decode_broker_message(&encoded).unwrap(), message);
    }
}

#[test]
fn agent_messages_round_trip() {
    for message in sample_agent_messages() {
        let encoded = encode_agent_message(&message);
        assert_eq!(decode_agent_message(&encoded).unwrap(), message);
    }
}

#[test]
fn video_header_layout_is_fixed() {
    let encoded = encode_video(&VideoPacket {
        pts_us: 0x0102030405060708,
        keyframe: true,
        data: vec![0xaa],
    });
    assert_eq!(encoded, vec![0x01, 0x01, 8, 7, 6, 5, 4, 3, 2, 1, 0xaa]);
}

#[test]
fn oversize_frames_rejected() {
    let mut video = vec![TAG_VIDEO, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    video.resize(MAX_AGENT_FRAME_LEN + 1, 0);
    assert!(matches!(
        decode_agent_message(&video),
        Err(DecodeError::TooLarge { .. })
    ));

    let mut control = vec![TAG_CONTROL];
    control.resize(MAX_BROKER_FRAME_LEN + 1, b' ');
    assert!(matches!(
        decode_broker_message(&control),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn garbage_frames_rejected() {
    assert_eq!(decode_agent_message(&[]), Err(DecodeError::Empty));
    assert_eq!(decode_broker_message(&[]), Err(DecodeError::Empty));
    assert_eq!(
        decode_agent_message(&[0x7f, 1, 2]),
        Err(DecodeError::UnknownTag(0x7f))
    );
    assert_eq!(
        decode_broker_message(&[TAG_VIDEO, 0]),
        Err(DecodeError::WrongDirection(TAG_VIDEO))
    );
    assert_eq!(
        decode_agent_message(&[TAG_VIDEO, 0, 1]),
        Err(DecodeError::TruncatedVideoHeader(3))
    );
    assert_eq!(
        decode_agent_message(&[TAG_VIDEO, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        Err(DecodeError::UnknownVideoFlags(0x80))
    );
    assert_eq!(
        decode_agent_message(&[TAG_VIDEO, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(DecodeError::EmptyVideoPayload)
    );
    assert!(matches!(
        decode_broker_message(b"\x02{\"type\":\"end\""),
        Err(DecodeError::InvalidJson(_))
    ));
    assert!(matches!(
        decode_broker_message(b"\x02{\"type\":\"mouse_move\",\"x\":1,\"y\":1,\"z\":1}"),
        Err(DecodeError::InvalidJson(_))
    ));
    assert!(matches!(
        decode_broker_message(b"\x02{\"type\":\"nope\"}"),
        Err(DecodeError::InvalidJson(_))
    ));
    assert!(matches!(
        decode_broker_message(b"\x02\xff\xfe"),
        Err(DecodeError::InvalidJson(_))
    ));
}

#[test]
fn download_chunk_layout_is_fixed() {
    let encoded = encode_download_chunk(&DownloadChunk {
        download_id: 0x0102,
        offset: 0x0a0b,
        data: vec![0xee],
    });
    assert_eq!(
        encoded,
        vec![
            0x03, 0x02, 0x01, 0, 0, 0, 0, 0, 0, 0x0b, 0x0a, 0, 0, 0, 0, 0, 0, 0xee
        ]
    );
}

#[test]
fn bad_download_frames_rejected() {
    assert_eq!(
        decode_agent_message(&[TAG_DOWNLOAD_CHUNK, 1, 2, 3]),
        Err(DecodeError::TruncatedChunkHeader(4))
    );
    assert_eq!(
        decode_agent_message(&[TAG_DOWNLOAD_CHUNK; 17]),
        Err(DecodeError::EmptyChunk)
    );
    let mut oversized = vec![TAG_DOWNLOAD_CHUNK; 17];
    oversized.resize(17 + limits::MAX_DOWNLOAD_CHUNK_LEN + 1, 0);
    assert!(matches!(
        decode_agent_message(&oversized),
        Err(DecodeError::InvalidValue(_))
    ));
    assert_eq!(
        decode_broker_message(&[TAG_DOWNLOAD_CHUNK; 20]),
        Err(DecodeError::WrongDirection(TAG_DOWNLOAD_CHUNK))
    );

    let long_name = "n".repeat(limits::MAX_FILE_NAME_LEN + 1);
    let cases = [
        r#"{"type":"download_start","version":2,"download_id":1,"name":"a","size":1}"#.to_owned(),
        r#"{"type":"download_start","version":1,"download_id":1,"name":"","size":1}"#.to_owned(),
        format!(
            r#"{{"type":"download_start","version":1,"download_id":1,"name":"{long_name}","size":1}}"#
        ),
        format!(
            r#"{{"type":"download_start","version":1,"download_id":1,"name":"a","size":{}}}"#,
            limits::MAX_DOWNLOAD_SIZE + 1
        ),
        r#"{"type":"download_end","download_id":1,"sha256":"AB"}"#.to_owned(),
        format!(
            r#"{{"type":"download_end","download_id":1,"sha256":"{}"}}"#,
            "AB".repeat(32)
        ),
    ];
    for case in cases {
        let mut frame = vec![TAG_CONTROL];
        frame.extend_from_slice(case.as_bytes());
        assert!(
            matches!(
                decode_agent_message(&frame),
                Err(DecodeError::InvalidValue(_))
            ),
            "{case}"
        );
    }
}

#[test]
fn deep_nesting_rejected_without_overflow() {
    let mut frame = vec![TAG_CONTROL];
    frame.extend(std::iter::repeat_n(b'[', 50_000));
    assert!(matches!(
        decode_broker_message(&frame[..MAX_BROKER_FRAME_LEN.min(frame.len())]),
        Err(DecodeError::InvalidJson(_))
    ));
}

#[test]
fn out_of_range_values_rejected() {
    let cases = [
        r#"{"type":"resize","width":10,"height":720,"device_pixel_ratio":1.0}"#,
        r#"{"type":"resize","width":1280,"height":99999,"device_pixel_ratio":1.0}"#,
        r#"{"type":"resize","width":1280,"height":720,"device_pixel_ratio":0}"#,
        r#"{"type":"resize","width":1280,"height":720,"device_pixel_ratio":null}"#,
        r#"{"type":"mouse_move","x":5000,"y":1}"#,
        r#"{"type":"mouse_move","x":-1,"y":1}"#,
        r#"{"type":"wheel","x":1,"y":1,"delta_x":1e30,"delta_y":0}"#,
        r#"{"type":"auth","secret":"short"}"#,
    ];
    for case in cases {
        let mut frame = vec![TAG_CONTROL];
        frame.extend_from_slice(case.as_bytes());
        assert!(decode_broker_message(&frame).is_err(), "accepted {case}");
    }

    let mut login = sample_login();
    login.steps.clear();
    assert!(matches!(
        decode_broker_message(&encode_broker_message(&BrokerMessage::AutoLogin(login))),
        Err(DecodeError::InvalidValue(_))
    ));

    let mut login = sample_login();
    login.steps.push(LoginStep::Fill {
        selector: "#otp".into(),
        field: CredentialField::Totp,
        timeout_ms: 100,
    });
    assert!(
        decode_broker_message(&encode_broker_message(&BrokerMessage::AutoLogin(login))).is_err()
    );

    let mut login = sample_login();
    login.steps[0] = LoginStep::WaitForSelector {
        selector: "#a".into(),
        timeout_ms: 0,
    };
    assert!(
        decode_broker_message(&encode_broker_message(&BrokerMessage::AutoLogin(login))).is_err()
    );

    let config = AgentControl::StreamConfig {
        codec: "h264".into(),
        width: 1280,
        height: 720,
    };
    assert!(decode_agent_message(&encode_agent_control(&config)).is_err());
}

#[test]
fn clipboard_text_is_bounded_and_non_empty() {
    let largest = "€".repeat(limits::MAX_CLIPBOARD_LEN / 3);
    let paste = BrokerMessage::Paste {
        text: largest.clone(),
    };
    assert_eq!(
        decode_broker_message(&encode_broker_message(&paste)).unwrap(),
        paste
    );

    // The largest paste of control characters, which JSON escapes to six bytes each,
    // still fits in one broker frame.
    let escaped = BrokerMessage::Paste {
        text: "\u{1}".repeat(limits::MAX_CLIPBOARD_LEN),
    };
    assert!(encode_broker_message(&escaped).len() <= MAX_BROKER_FRAME_LEN);
    assert!(decode_broker_message(&encode_broker_message(&escaped)).is_ok());

    let too_long = "x".repeat(limits::MAX_CLIPBOARD_LEN + 1);
    for rejected in [
        encode_broker_message(&BrokerMessage::Paste {
            text: too_long.clone(),
        })
        .to_vec(),
        encode_broker_message(&BrokerMessage::Paste { text: String::new() }).to_vec(),
    ] {
        assert!(matches!(
            decode_broker_message(&rejected),
            Err(DecodeError::InvalidValue(_))
        ));
    }
    let copied = AgentControl::ClipboardChanged { text: too_long };
    assert!(matches!(
        decode_agent_message(&encode_agent_control(&copied)),
        Err(DecodeError::InvalidValue(_))
    ));
}

#[test]
fn secret_hash_matches_only_same_secret() {
    let hash = parse_sha256_hex(&secret().sha256_hex()).unwrap();
    assert!(secret().matches_sha256(&hash));
    let other = SessionSecret::new("1123456789abcdef0123456789abcdef0123456789abcdef".to_owned());
    assert!(!other.matches_sha256(&hash));
    assert!(parse_sha256_hex("abc").is_err());
    assert!(parse_sha256_hex(&"zz".repeat(32)).is_err());
}

#[test]
fn debug_output_redacts_secrets() {
    let message = BrokerMessage::AutoLogin(sample_login());
    let rendered = format!("{message:?} {:?}", BrokerMessage::Auth { secret: secret() });
    assert!(!rendered.contains("alice"), "{rendered}");
    assert!(!rendered.contains("p&ss"), "{rendered}");
    assert!(!rendered.contains("0123456789abcdef"), "{rendered}");
    assert!(rendered.contains("<redacted>"));
}

#[test]
fn line_breaks_not_typeable() {
    assert!(check_credential_typeable(&"two\nlines".into()).is_err());
    assert!(check_credential_typeable(&"cr\rx".into()).is_err());
    assert!(check_credential_typeable(&"tab\tx".into()).is_err());
    assert!(check_credential_typeable(&"pässwörd€ ".into()).is_ok());
}

fn valid_frames() -> Vec<Vec<u8>> {
    let mut frames: Vec<Vec<u8>> = sample_broker_messages()
        .iter()
        .map(|m| encode_broker_message(m).to_vec())
        .collect();
    frames.extend(sample_agent_messages().iter().map(encode_agent_message));
    frames
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_agent_message(&bytes);
        let _ = decode_broker_message(&bytes);
    }

    #[test]
    fn clipboard_text_round_trips_exactly(text in any::<String>().prop_filter("non-empty", |t| !t.is_empty())) {
        let paste = BrokerMessage::Paste { text: text.clone() };
        prop_assert_eq!(decode_broker_message(&encode_broker_message(&paste)).unwrap(), paste);
        let copied = AgentControl::ClipboardChanged { text };
        prop_assert_eq!(
            decode_agent_message(&encode_agent_control(&copied)).unwrap(),
            AgentMessage::Control(copied)
        );
    }

    #[test]
    fn download_messages_round_trip_exactly(
        download_id in any::<u64>(),
        offset in any::<u64>(),
        data in proptest::collection::vec(any::<u8>(), 1..4096),
        name in "\\PC{1,60}",
        size in 0..=limits::MAX_DOWNLOAD_SIZE,
    ) {
        let chunk = AgentMessage::DownloadChunk(DownloadChunk { download_id, offset, data });
        prop_assert_eq!(decode_agent_message(&encode_agent_message(&chunk)).unwrap(), chunk);
        let start = AgentMessage::Control(AgentControl::DownloadStart {
            version: DOWNLOAD_PROTOCOL_VERSION,
            download_id,
            name,
            size,
        });
        prop_assert_eq!(decode_agent_message(&encode_agent_message(&start)).unwrap(), start);
    }

    #[test]
    fn decoders_never_panic_on_mutated_frames(
        index in 0usize..64,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let frames = valid_frames();
        let mut frame = frames[index % frames.len()].clone();
        for (position, byte) in edits {
            let at = position.index(frame.len());
            frame[at] = byte;
        }
        let cut_at = cut.index(frame.len() + 1);
        for candidate in [&frame[..], &frame[..cut_at]] {
            if let Ok(message) = decode_agent_message(candidate) {
                // Whatever decodes must re-encode to a frame that decodes to the same value.
                prop_assert_eq!(decode_agent_message(&encode_agent_message(&message)).unwrap(), message);
            }
            if let Ok(message) = decode_broker_message(candidate) {
                prop_assert_eq!(decode_broker_message(&encode_broker_message(&message)).unwrap(), message);
            }
        }
    }
}
