//! Writing, reading, seeking, verification and recovery against real files.

mod common;

use std::fs;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use recorder::{
    Marker, Packet, Record, RecorderError, RecordingReader, SegmentFault, Storage, Tamper,
    recover_recording, seal_recovered, verify_recording,
};
use sha2::{Digest, Sha256};

fn packets_of(records: &[Record]) -> Vec<Packet> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Packet(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn round_trip_returns_every_packet_and_marker() {
    let fx = Fixture::new();
    let mut writer = fx.writer(test_config(), default_expiry());
    let id = writer.id();

    // A non-keyframe before the first keyframe cannot be decoded and is dropped.
    let early = Packet {
        pts_us: 0,
        keyframe: false,
        data: Bytes::from_static(b"undecodable"),
    };
    assert!(writer.push_packet(early).unwrap().is_none());

    let input: Vec<Packet> = synthetic_packets(10, 30, 30)
        .map(|mut p| {
            p.pts_us += 40_000;
            p
        })
        .collect();
    let mut stored = Vec::new();
    for (i, packet) in input.iter().cloned().enumerate() {
        if i == 95 {
            writer
                .push_marker(Marker::PlaceholderStarted {
                    pts_us: packet.pts_us,
                })
                .unwrap();
        }
        if i == 160 {
            writer
                .push_marker(Marker::PlaceholderEnded {
                    pts_us: packet.pts_us,
                })
                .unwrap();
        }
        stored.extend(writer.push_packet(packet).unwrap());
    }
    let sealed = writer.seal().unwrap();
    stored.extend(sealed.final_segment.clone());

    assert_eq!(sealed.manifest.segment_count, 5, "10 s in 2 s segments");
    assert_eq!(sealed.manifest.segments, stored);
    assert_eq!(sealed.manifest.dropped_before_first_keyframe, 1);
    for segment in &stored {
        let file = fs::read(segment_path(&fx.recording_dir(id), segment.index)).unwrap();
        assert_eq!(
            <[u8; 32]>::from(Sha256::digest(&file)),
            segment.sha256,
            "hash of segment {}",
            segment.index
        );
        assert_eq!(file.len() as u64, segment.bytes);
        assert!(
            !file.windows(11).any(|w| w == &input[1].data[..11]),
            "plaintext visible in segment file"
        );
    }

    let reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    assert!(reader.is_sealed());
    let records: Vec<Record> = reader.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(packets_of(&records), input);
    assert_eq!(records[0], Record::Config(vp8_config()));
    let markers: Vec<Marker> = records
        .iter()
        .filter_map(|r| match r {
            Record::Marker(m) => Some(*m),
            _ => None,
        })
        .collect();
    assert_eq!(
        markers,
        vec![
            Marker::PlaceholderStarted {
                pts_us: input[95].pts_us
            },
            Marker::PlaceholderEnded {
                pts_us: input[160].pts_us
            },
        ]
    );
    for segment in reader.segments() {
        let first = reader.read_segment(segment.index).unwrap();
        let first_packet = packets_of(&first).into_iter().next().unwrap();
        assert!(
            first_packet.keyframe,
            "segment {} starts with a keyframe",
            segment.index
        );
    }
    assert_eq!(
        reader.duration(),
        Duration::from_micros(input.last().unwrap().pts_us - input[0].pts_us)
    );
}

#[test]
fn stream_config_change_is_recorded_in_order() {
    let fx = Fixture::new();
    let mut writer = fx.writer(test_config(), default_expiry());
    let id = writer.id();
    let packets: Vec<Packet> = synthetic_packets(6, 10, 10).collect();
    let resized = recorder::StreamConfig {
        codec: "vp8".into(),
        width: 800,
        height: 600,
    };
    for (i, packet) in packets.iter().cloned().enumerate() {
        if i == 30 {
            writer.push_config(resized.clone()).unwrap();
        }
        writer.push_packet(packet).unwrap();
    }
    writer.seal().unwrap();

    let reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    let last_segment = reader.segments().last().unwrap().index;
    let records = reader.read_segment(last_segment).unwrap();
    assert_eq!(records[0], Record::Config(resized));
}

#[test]
fn seek_in_ten_minute_recording_lands_within_a_second() {
    let fx = Fixture::new();
    let mut config = test_config();
    config.target_segment_duration = Duration::from_secs(4);
    let mut writer = fx.writer(config, default_expiry());
    let id = writer.id();
    // 10 minutes at 30 frames per second with a keyframe every second.
    write_all(&mut writer, synthetic_packets(600, 30, 30));
    writer.seal().unwrap();

    let reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    assert!(reader.duration() >= Duration::from_secs(599));
    assert_eq!(reader.segments().len(), 150);

    let target_us = 450_000_000u64; // 7:30
    let records: Vec<Record> = reader
        .seek(Duration::from_micros(target_us))
        .unwrap()
        .take(40)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(records[0], Record::Config(vp8_config()));
    let packets = packets_of(&records);
    let first = &packets[0];
    assert!(first.keyframe);
    assert!(
        first.pts_us <= target_us,
        "first packet at {} us is after the target",
        first.pts_us
    );
    assert!(
        target_us - first.pts_us < 1_000_000,
        "first packet at {} us is more than 1 s early",
        first.pts_us
    );
    assert!(packets.windows(2).all(|w| w[0].pts_us < w[1].pts_us));

    // Between keyframes: 7:30.5 starts at the keyframe at 7:30.
    let mid: Vec<Record> = reader
        .seek(Duration::from_micros(450_500_000))
        .unwrap()
        .take(3)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(packets_of(&mid)[0].pts_us, 450_000_000);

    // Seeking past the end starts at the last keyframe; reading to the end works.
    let tail: Vec<Record> = reader
        .seek(Duration::from_secs(3600))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(packets_of(&tail)[0].pts_us, 599_000_000);
    assert_eq!(packets_of(&tail).len(), 30);
}

#[test]
fn seek_into_placeholder_gap_reports_the_gap() {
    let fx = Fixture::new();
    let mut writer = fx.writer(test_config(), default_expiry());
    let id = writer.id();
    for packet in synthetic_packets(10, 10, 10) {
        if packet.pts_us == 1_500_000 {
            writer
                .push_marker(Marker::PlaceholderStarted {
                    pts_us: packet.pts_us,
                })
                .unwrap();
        }
        writer.push_packet(packet).unwrap();
    }
    writer.seal().unwrap();

    let reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    let records: Vec<Record> = reader
        .seek(Duration::from_secs(7))
        .unwrap()
        .take(3)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        records[1],
        Record::Marker(Marker::PlaceholderStarted { pts_us: 7_000_000 })
    );
}

/// Writes a sealed recording of 5 segments and returns its id and the hashes.
fn five_segment_recording(fx: &Fixture) -> (uuid::Uuid, Vec<[u8; 32]>) {
    let mut writer = fx.writer(test_config(), default_expiry());
    let mut stored = write_all(&mut writer, synthetic_packets(10, 30, 30));
    stored.extend(writer.seal().unwrap().final_segment);
    assert_eq!(stored.len(), 5);
    (writer.id(), hashes(&stored))
}

fn assert_unplayable(fx: &Fixture, id: uuid::Uuid, index: u64) {
    let reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    let error = reader.read_segment(index).unwrap_err();
    assert!(
        matches!(error, RecorderError::InvalidSegment { index: i, .. } if i == index),
        "segment {index} must fail, got {error:?}"
    );
    let played: Vec<_> = reader.records().collect();
    assert!(
        played.last().unwrap().is_err(),
        "replay must end in an error"
    );
}

#[test]
fn verify_detects_flipped_bit() {
    let fx = Fixture::new();
    let (id, expected) = five_segment_recording(&fx);
    let path = segment_path(&fx.recording_dir(id), 2);
    let mut file = fs::read(&path).unwrap();
    let last = file.len() - 30;
    file[last] ^= 0x01;
    fs::write(&path, file).unwrap();

    let report = verify_recording(fx.storage.as_ref(), id, &expected).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].index, 2);
    assert_eq!(report.problems[0].kind, Tamper::Modified);
    assert_unplayable(&fx, id, 2);
}

#[test]
fn verify_detects_reordered_segments() {
    let fx = Fixture::new();
    let (id, expected) = five_segment_recording(&fx);
    let dir = fx.recording_dir(id);
    let tmp = dir.join("swap");
    fs::rename(segment_path(&dir, 1), &tmp).unwrap();
    fs::rename(segment_path(&dir, 3), segment_path(&dir, 1)).unwrap();
    fs::rename(&tmp, segment_path(&dir, 3)).unwrap();

    let report = verify_recording(fx.storage.as_ref(), id, &expected).unwrap();
    let found: Vec<(u64, Tamper)> = report
        .problems
        .iter()
        .map(|p| (p.index, p.kind.clone()))
        .collect();
    assert_eq!(
        found,
        vec![
            (1, Tamper::Reordered { holds_index: 3 }),
            (3, Tamper::Reordered { holds_index: 1 })
        ]
    );
    assert_unplayable(&fx, id, 1);
}

#[test]
fn verify_detects_segment_from_other_recording() {
    let fx = Fixture::new();
    let (id, expected) = five_segment_recording(&fx);
    let (other, _) = five_segment_recording(&fx);
    fs::copy(
        segment_path(&fx.recording_dir(other), 4),
        segment_path(&fx.recording_dir(id), 4),
    )
    .unwrap();

    let report = verify_recording(fx.storage.as_ref(), id, &expected).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].index, 4);
    assert_eq!(
        report.problems[0].kind,
        Tamper::Swapped {
            from_recording: other
        }
    );
    assert_unplayable(&fx, id, 4);
}

#[test]
fn verify_detects_truncated_segment() {
    let fx = Fixture::new();
    let (id, expected) = five_segment_recording(&fx);
    let path = segment_path(&fx.recording_dir(id), 0);
    let file = fs::read(&path).unwrap();
    fs::write(&path, &file[..file.len() / 2]).unwrap();

    let report = verify_recording(fx.storage.as_ref(), id, &expected).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].index, 0);
    assert_eq!(
        report.problems[0].kind,
        Tamper::Truncated {
            expected: file.len() as u64,
            actual: (file.len() / 2) as u64
        }
    );
    assert_unplayable(&fx, id, 0);
}

#[test]
fn verify_detects_removed_segments() {
    let fx = Fixture::new();
    let (id, expected) = five_segment_recording(&fx);
    fs::remove_file(segment_path(&fx.recording_dir(id), 2)).unwrap();
    fs::remove_file(segment_path(&fx.recording_dir(id), 4)).unwrap();

    let report = verify_recording(fx.storage.as_ref(), id, &expected).unwrap();
    let found: Vec<(u64, Tamper)> = report
        .problems
        .iter()
        .map(|p| (p.index, p.kind.clone()))
        .collect();
    assert_eq!(found, vec![(2, Tamper::Removed), (4, Tamper::Removed)]);
    assert_unplayable(&fx, id, 2);
}

#[test]
fn verify_detects_plaintext_replacement_and_extra_segment() {
    let fx = Fixture::new();
    let (id, expected) = five_segment_recording(&fx);
    let dir = fx.recording_dir(id);
    fs::write(
        segment_path(&dir, 1),
        b"plain unencrypted bytes that must never play",
    )
    .unwrap();
    fs::copy(segment_path(&dir, 0), segment_path(&dir, 5)).unwrap();

    let report = verify_recording(fx.storage.as_ref(), id, &expected).unwrap();
    let found: Vec<(u64, Tamper)> = report
        .problems
        .iter()
        .map(|p| (p.index, p.kind.clone()))
        .collect();
    assert_eq!(
        found,
        vec![(1, Tamper::NotASegment), (5, Tamper::Unexpected)]
    );
    assert!(
        verify_recording(fx.storage.as_ref(), id, &expected[..4])
            .unwrap()
            .problems
            .iter()
            .any(|p| p.index == 4)
    );
    assert_unplayable(&fx, id, 1);
}

#[test]
fn verify_passes_untouched_recording() {
    let fx = Fixture::new();
    let (id, expected) = five_segment_recording(&fx);
    let report = verify_recording(fx.storage.as_ref(), id, &expected).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.found_segments, 5);
    assert!(report.sealed);

    let mut reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    reader.require_hashes(expected.clone()).unwrap();
    assert!(reader.records().all(|r| r.is_ok()));
    let mut wrong = expected;
    wrong[3] = [0u8; 32];
    reader.require_hashes(wrong).unwrap();
    assert!(matches!(
        reader.read_segment(3),
        Err(RecorderError::InvalidSegment {
            index: 3,
            fault: SegmentFault::HashMismatch,
            ..
        })
    ));
}

#[test]
fn altered_seal_is_rejected() {
    let fx = Fixture::new();
    let (id, _) = five_segment_recording(&fx);
    let path = fx.recording_dir(id).join("seal.srs");
    let seal = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
    fs::write(
        &path,
        seal.replacen("\"segment_count\":5", "\"segment_count\":4", 1),
    )
    .unwrap();
    assert!(matches!(
        RecordingReader::open(fx.storage.clone(), &fx.keys, id),
        Err(RecorderError::InvalidSeal { .. })
    ));
}

#[test]
fn crash_mid_segment_keeps_earlier_segments() {
    let fx = Fixture::new();
    let mut writer = fx.writer(test_config(), default_expiry());
    let id = writer.id();
    // 7 s in 2 s segments: 3 stored, the 4th still open when the process dies.
    let stored = write_all(&mut writer, synthetic_packets(7, 30, 30));
    assert_eq!(stored.len(), 3);
    drop(writer);
    // A write interrupted between create and rename leaves a partial temporary file.
    let dir = fx.recording_dir(id);
    let partial = fs::read(segment_path(&dir, 0)).unwrap();
    fs::write(
        dir.join(".tmp-seg-00000003.srs.0123456789abcdef"),
        &partial[..100],
    )
    .unwrap();

    let reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    assert!(!reader.is_sealed());
    assert_eq!(reader.segments().len(), 3);
    let packets: Vec<Packet> =
        packets_of(&reader.records().collect::<Result<Vec<_>, _>>().unwrap());
    assert_eq!(packets, synthetic_packets(6, 30, 30).collect::<Vec<_>>());

    let report = recover_recording(fx.storage.as_ref(), &fx.keys, id).unwrap();
    assert_eq!(report.removed_partial, 1);
    assert_eq!(report.contiguous, 3);
    assert_eq!(report.intact, stored);
    assert!(report.damaged.is_empty());
    assert!(!dir.join(".tmp-seg-00000003.srs.0123456789abcdef").exists());

    assert!(matches!(
        seal_recovered(fx.storage.as_ref(), &fx.keys, id, 4),
        Err(RecorderError::CannotSeal { .. })
    ));
    let sealed = seal_recovered(fx.storage.as_ref(), &fx.keys, id, 3).unwrap();
    assert_eq!(sealed.manifest.segment_count, 3);
    let reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    assert!(reader.is_sealed());
    assert_eq!(reader.records().filter(|r| r.is_ok()).count(), 6 * 30 + 3);
    assert!(
        verify_recording(fx.storage.as_ref(), id, &hashes(&stored))
            .unwrap()
            .is_intact()
    );
}

#[test]
fn recovery_reports_damaged_segment() {
    let fx = Fixture::new();
    let mut writer = fx.writer(test_config(), default_expiry());
    let id = writer.id();
    write_all(&mut writer, synthetic_packets(7, 30, 30));
    drop(writer);
    let path = segment_path(&fx.recording_dir(id), 1);
    let mut file = fs::read(&path).unwrap();
    let at = file.len() - 1;
    file[at] ^= 0x80;
    fs::write(&path, file).unwrap();

    let report = recover_recording(fx.storage.as_ref(), &fx.keys, id).unwrap();
    assert_eq!(report.contiguous, 1);
    assert_eq!(
        report.damaged,
        vec![(1, SegmentFault::AuthenticationFailed)]
    );
    assert_eq!(report.intact.len(), 2);
}

#[test]
fn packets_after_seal_are_rejected() {
    let fx = Fixture::new();
    let mut writer = fx.writer(test_config(), default_expiry());
    write_all(&mut writer, synthetic_packets(1, 30, 30));
    writer.seal().unwrap();
    let packet = synthetic_packets(1, 30, 30).next().unwrap();
    assert!(matches!(
        writer.push_packet(packet),
        Err(RecorderError::AlreadySealed(_))
    ));
    assert!(matches!(
        writer.seal(),
        Err(RecorderError::AlreadySealed(_))
    ));
}

#[test]
fn backwards_pts_fails_the_writer() {
    let fx = Fixture::new();
    let mut writer = fx.writer(test_config(), default_expiry());
    let mut packets = synthetic_packets(1, 30, 30);
    let first = packets.next().unwrap();
    let second = packets.next().unwrap();
    writer.push_packet(first.clone()).unwrap();
    writer.push_packet(second).unwrap();
    assert!(matches!(
        writer.push_packet(first.clone()),
        Err(RecorderError::PtsWentBackwards { .. })
    ));
    assert!(matches!(
        writer.push_packet(first),
        Err(RecorderError::WriterFailed(_))
    ));
    // What was accepted before the error is still sealed and readable.
    let sealed = writer.seal().unwrap();
    assert_eq!(sealed.manifest.segment_count, 1);
}

#[test]
fn missing_keyframes_hit_the_segment_limit() {
    let fx = Fixture::new();
    let mut config = test_config();
    config.max_segment_bytes = 64 * 1024;
    config.target_segment_bytes = 32 * 1024;
    config.max_packet_bytes = 32 * 1024;
    let mut writer = fx.writer(config, default_expiry());
    let mut result = Ok(None);
    for packet in synthetic_packets(60, 30, 100_000) {
        result = writer.push_packet(packet);
        if result.is_err() {
            break;
        }
    }
    assert!(
        matches!(result, Err(RecorderError::SegmentTooLarge { index: 0, .. })),
        "{result:?}"
    );
}

#[test]
fn storage_lists_no_partial_objects() {
    let fx = Fixture::new();
    let (id, _) = five_segment_recording(&fx);
    fs::write(
        fx.recording_dir(id).join(".tmp-seg-00000009.srs.aa"),
        b"partial",
    )
    .unwrap();
    let names: Vec<String> = fx
        .storage
        .list(id)
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    assert!(names.contains(&"recording.json".to_owned()));
}
