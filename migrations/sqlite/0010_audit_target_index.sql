-- Lets replay, export and recovery read one recording's segment events
-- (`recording.segment.stored` with target `recording:ID`) without scanning the trail.
CREATE INDEX audit_events_target ON audit_events (target, action, seq);
