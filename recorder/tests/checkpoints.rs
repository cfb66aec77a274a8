//! Checkpoint parts of the open segment: what a crash keeps, and how recovery rejects
//! parts that were altered, cut short, reordered or moved.

mod common;

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use recorder::{
    Packet, RecorderConfig, RecorderError, RecordingReader, RecoveryReport, SegmentFault, Storage,
    recover_recording,
};
use uuid::Uuid;

const FRAME_US: u64 = 1_000_000 / 30;

fn dyn_storage(fx: &Fixture) -> Arc<dyn Storage> {
    fx.storage.clone()
}

/// The packets that the parts `0..parts` of segment 1 hold, with the segment before it:
/// segment 1 starts at the keyframe at 6 s, part 0 ends before the packet at 7 s, and
/// each later part ends before the packet one interval after the previous part's last.
fn kept_through_part(packets: &[Packet], parts: u32) -> Vec<Packet> {
    // Part ends, found by the writer's rule, for a 30 packets per second stream.
    let mut checkpointed = 6_000_000u64;
    let mut end = 0usize;
    let mut stored = 0;
    for (i, packet) in packets.iter().enumerate().skip(6 * 30 + 1) {
        if stored == parts {
            break;
        }
        if packet.pts_us - checkpointed >= 1_000_000 {
            end = i;
            checkpointed = packets[i - 1].pts_us;
            stored += 1;
        }
    }
    assert_eq!(stored, parts, "the stream is too short for {parts} parts");
    packets[..end].to_vec()
}

#[test]
fn crash_keeps_the_open_segment_up_to_the_last_checkpoint() {
    let fx = Fixture::new();
    // Killed 2.5 s into segment 1, which starts at the keyframe at 6 s.
    let packets = agent_like_packets(8_500_000);
    let (id, stored) = write_and_crash(dyn_storage(&fx), &fx.keys, &packets);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        part_names(fx.storage.as_ref(), id),
        vec![part_name(1, 0), part_name(1, 1)]
    );

    let expected = kept_through_part(&packets, 2);
    let lost_us = packets.last().unwrap().pts_us - expected.last().unwrap().pts_us;
    assert!(lost_us <= 1_000_000 + FRAME_US, "lost {lost_us} us");

    let report = seal_and_check_recovered(dyn_storage(&fx), &fx.keys, id, &stored, &expected);
    let assembled = report.assembled.expect("segment 1 rebuilt from its parts");
    assert_eq!(assembled.parts, 2);
    assert_eq!(assembled.segment.index, 1);
    assert_eq!(assembled.segment.start_pts_us, 6_000_000);
    assert_eq!(
        assembled.segment.end_pts_us,
        expected.last().unwrap().pts_us
    );
    assert!(report.rejected_parts.is_empty());
}

#[test]
fn crash_in_the_first_segment_keeps_its_checkpoints() {
    let fx = Fixture::new();
    let packets = agent_like_packets(2_500_000);
    let (id, stored) = write_and_crash(dyn_storage(&fx), &fx.keys, &packets);
    assert!(stored.is_empty());

    // Parts end before the packets at 1 s and 1.967 s.
    let expected = packets[..59].to_vec();
    let report = seal_and_check_recovered(dyn_storage(&fx), &fx.keys, id, &stored, &expected);
    assert_eq!(report.assembled.map(|a| a.parts), Some(2));
}

#[test]
fn cut_segments_leave_no_parts_and_read_as_before() {
    let fx = Fixture::new();
    let mut writer = fx.writer(checkpoint_config(), default_expiry());
    let id = writer.id();
    let packets = agent_like_packets(20_000_000);
    let mut stored = write_all(&mut writer, packets.iter().cloned());
    // Segments 0 to 2 are stored whole; segment 3, open from 18 s, has two parts.
    wait_for_object(fx.storage.as_ref(), id, &part_name(3, 1));
    assert_eq!(
        part_names(fx.storage.as_ref(), id),
        vec![part_name(3, 0), part_name(3, 1)]
    );
    stored.extend(writer.seal().unwrap().final_segment);
    assert!(part_names(fx.storage.as_ref(), id).is_empty());

    let reader = RecordingReader::open(fx.storage.clone(), &fx.keys, id).unwrap();
    assert_eq!(reader.segments().len(), stored.len());
    let replayed = reader
        .records()
        .filter_map(|r| match r.unwrap() {
            recorder::Record::Packet(p) => Some(p),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(replayed, packets);
}

#[test]
fn zero_interval_stores_no_parts() {
    let fx = Fixture::new();
    let config = RecorderConfig {
        checkpoint_interval: Duration::ZERO,
        ..checkpoint_config()
    };
    let mut writer = fx.writer(config, default_expiry());
    let id = writer.id();
    write_all(&mut writer, agent_like_packets(8_500_000));
    assert!(!writer.checkpoint().unwrap());
    assert!(part_names(fx.storage.as_ref(), id).is_empty());
}

#[test]
fn explicit_checkpoint_stores_what_came_before_a_pause() {
    let fx = Fixture::new();
    let mut writer = fx.writer(checkpoint_config(), default_expiry());
    let id = writer.id();
    let packets = agent_like_packets(500_000);
    write_all(&mut writer, packets.iter().cloned());
    assert!(part_names(fx.storage.as_ref(), id).is_empty());
    assert!(writer.checkpoint().unwrap());
    // Nothing new since: no empty part.
    assert!(!writer.checkpoint().unwrap());
    drop(writer);

    let report = seal_and_check_recovered(dyn_storage(&fx), &fx.keys, id, &[], &packets);
    assert_eq!(report.assembled.map(|a| a.parts), Some(1));
}

#[test]
fn too_short_interval_is_rejected_by_name() {
    let config = RecorderConfig {
        checkpoint_interval: Duration::from_millis(10),
        ..RecorderConfig::default()
    };
    let error = config.validate().unwrap_err();
    assert!(matches!(error, RecorderError::InvalidConfig(_)), "{error}");
    assert!(error.to_string().contains("checkpoint_interval"), "{error}");
}

/// A recording killed 3.5 s into segment 1, which leaves parts 0, 1 and 2 of it.
fn crash_with_three_parts(fx: &Fixture) -> (Uuid, Vec<recorder::SegmentStored>, Vec<Packet>) {
    let packets = agent_like_packets(9_500_000);
    let (id, stored) = write_and_crash(dyn_storage(fx), &fx.keys, &packets);
    assert_eq!(
        part_names(fx.storage.as_ref(), id),
        vec![part_name(1, 0), part_name(1, 1), part_name(1, 2)]
    );
    (id, stored, packets)
}

/// Recovers after damage to part 1 and checks that only part 0 is kept and that the
/// report names part 1 with `fault` and part 2 as following it.
fn assert_part_one_rejected(
    fx: &Fixture,
    id: Uuid,
    stored: &[recorder::SegmentStored],
    packets: &[Packet],
    fault: SegmentFault,
) -> RecoveryReport {
    let expected = kept_through_part(packets, 1);
    let report = seal_and_check_recovered(dyn_storage(fx), &fx.keys, id, stored, &expected);
    assert_eq!(report.assembled.as_ref().map(|a| a.parts), Some(1));
    assert_eq!(
        report.rejected_parts,
        vec![
            (part_name(1, 1), fault),
            (part_name(1, 2), SegmentFault::AfterRejectedPart),
        ]
    );
    report
}

#[test]
fn modified_part_is_rejected_with_the_parts_after_it() {
    let fx = Fixture::new();
    let (id, stored, packets) = crash_with_three_parts(&fx);
    let path = fx.recording_dir(id).join(part_name(1, 1));
    let mut file = fs::read(&path).unwrap();
    let at = file.len() - 20;
    file[at] ^= 0x01;
    fs::write(&path, file).unwrap();

    assert_part_one_rejected(
        &fx,
        id,
        &stored,
        &packets,
        SegmentFault::AuthenticationFailed,
    );
}

#[test]
fn truncated_part_is_rejected() {
    let fx = Fixture::new();
    let (id, stored, packets) = crash_with_three_parts(&fx);
    let path = fx.recording_dir(id).join(part_name(1, 1));
    let file = fs::read(&path).unwrap();
    fs::write(&path, &file[..file.len() - 100]).unwrap();

    let fault = SegmentFault::Truncated {
        expected: file.len() as u64,
        actual: file.len() as u64 - 100,
    };
    assert_part_one_rejected(&fx, id, &stored, &packets, fault);
}

#[test]
fn reordered_parts_are_rejected() {
    let fx = Fixture::new();
    let (id, stored, packets) = crash_with_three_parts(&fx);
    let dir = fx.recording_dir(id);
    let one = fs::read(dir.join(part_name(1, 1))).unwrap();
    let two = fs::read(dir.join(part_name(1, 2))).unwrap();
    fs::write(dir.join(part_name(1, 1)), two).unwrap();
    fs::write(dir.join(part_name(1, 2)), one).unwrap();

    assert_part_one_rejected(&fx, id, &stored, &packets, SegmentFault::WrongPart(2));
}

#[test]
fn missing_part_is_named_and_ends_the_segment() {
    let fx = Fixture::new();
    let (id, stored, packets) = crash_with_three_parts(&fx);
    fs::remove_file(fx.recording_dir(id).join(part_name(1, 1))).unwrap();

    let expected = kept_through_part(&packets, 1);
    let report = seal_and_check_recovered(dyn_storage(&fx), &fx.keys, id, &stored, &expected);
    assert_eq!(
        report.rejected_parts,
        vec![
            (part_name(1, 1), SegmentFault::Missing),
            (part_name(1, 2), SegmentFault::AfterRejectedPart),
        ]
    );
}

#[test]
fn part_moved_from_another_recording_is_rejected() {
    let fx = Fixture::new();
    let (id, stored, packets) = crash_with_three_parts(&fx);
    let (other, _, _) = crash_with_three_parts(&fx);
    let foreign = fs::read(fx.recording_dir(other).join(part_name(1, 1))).unwrap();
    fs::write(fx.recording_dir(id).join(part_name(1, 1)), foreign).unwrap();

    assert_part_one_rejected(
        &fx,
        id,
        &stored,
        &packets,
        SegmentFault::WrongRecording(other),
    );
}

/// Writes a recording killed 3.5 s into segment 1, keeping a copy of part `part` of
/// segment 0 as it was at 4.5 s, while that segment was open with parts 0 to 3; the cut
/// at 6 s removed it. Returns the id, the stored segments, the packets and the copy.
fn crash_keeping_an_early_part(
    fx: &Fixture,
    part: u32,
) -> (Uuid, Vec<recorder::SegmentStored>, Vec<Packet>, Vec<u8>) {
    let packets = agent_like_packets(9_500_000);
    let mut writer = fx.writer(checkpoint_config(), default_expiry());
    let id = writer.id();
    let (before, after) = packets.split_at(4 * 30 + 15);
    let mut stored = write_all(&mut writer, before.iter().cloned());
    wait_for_object(fx.storage.as_ref(), id, &part_name(0, part));
    let copy = fs::read(fx.recording_dir(id).join(part_name(0, part))).unwrap();
    stored.extend(write_all(&mut writer, after.iter().cloned()));
    drop(writer);
    (id, stored, packets, copy)
}

#[test]
fn part_moved_from_another_segment_is_rejected() {
    let fx = Fixture::new();
    let (id, stored, packets, earlier) = crash_keeping_an_early_part(&fx, 1);
    fs::write(fx.recording_dir(id).join(part_name(1, 1)), earlier).unwrap();

    assert_part_one_rejected(&fx, id, &stored, &packets, SegmentFault::WrongIndex(0));
}

#[test]
fn parts_of_a_stored_segment_are_removed_without_a_report() {
    let fx = Fixture::new();
    // A crash between storing segment 0 and removing its parts leaves them behind.
    let (id, stored, packets, leftover) = crash_keeping_an_early_part(&fx, 0);
    fs::write(fx.recording_dir(id).join(part_name(0, 0)), leftover).unwrap();

    let expected = kept_through_part(&packets, 3);
    let report = seal_and_check_recovered(dyn_storage(&fx), &fx.keys, id, &stored, &expected);
    assert_eq!(report.assembled.map(|a| a.parts), Some(3));
    assert!(report.rejected_parts.is_empty());
}

#[test]
fn recovery_of_a_recovered_recording_changes_nothing() {
    let fx = Fixture::new();
    let (id, _, packets) = crash_with_three_parts(&fx);
    let first = recover_recording(fx.storage.as_ref(), &fx.keys, id).unwrap();
    assert_eq!(first.assembled.as_ref().map(|a| a.parts), Some(3));
    let expected = kept_through_part(&packets, 3);
    let second = seal_and_check_recovered(dyn_storage(&fx), &fx.keys, id, &first.intact, &expected);
    assert!(second.assembled.is_none());
    assert!(second.rejected_parts.is_empty());
}
