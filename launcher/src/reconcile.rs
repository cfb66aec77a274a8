//! Reconciliation as a pure plan over (runtime objects, live sessions, launches in flight).
//!
//! The launcher executes the plan: container removals first, because Docker refuses to
//! remove a network that still has endpoints.

use std::collections::{BTreeSet, HashSet};

use uuid::Uuid;

use crate::labels;
use crate::protocol::WorkloadState;
use crate::runtime::OwnedObjects;

/// One step of a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Removes a container whose session is not live (or that has no valid session label).
    RemoveContainer {
        session_id: Option<Uuid>,
        id: String,
        name: String,
    },
    /// Removes a network whose session is not live (or that has no valid session label).
    RemoveNetwork {
        session_id: Option<Uuid>,
        id: String,
        name: String,
    },
    /// Reports a live session whose workspace cannot serve it any more.
    ReportDead {
        session_id: Uuid,
        state: WorkloadState,
    },
}

/// The actions, in execution order, and the sessions left alone because they are being
/// launched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub skipped_in_flight: Vec<Uuid>,
}

/// Plans the reconciliation of `instance_id`'s objects.
///
/// `live` is the set of sessions the broker considers running (launch completed, not
/// ended). A live session with no container at all is reported dead as
/// [`WorkloadState::Missing`]. Objects labelled with another instance id are ignored even
/// if the listing returned them.
pub fn plan(
    objects: &OwnedObjects,
    instance_id: &str,
    live: &HashSet<Uuid>,
    in_flight: &HashSet<Uuid>,
) -> Plan {
    let mine = |labels: &std::collections::BTreeMap<String, String>| {
        labels::instance_of(labels) == Some(instance_id)
    };
    let session_of = labels::session_of;

    let mut removals = Vec::new();
    let mut network_removals = Vec::new();
    let mut reports = Vec::new();
    let mut skipped = BTreeSet::new();
    let mut sessions_with_container = HashSet::new();

    for container in objects.containers.iter().filter(|c| mine(&c.labels)) {
        let session_id = session_of(&container.labels);
        match session_id {
            Some(id) if in_flight.contains(&id) => {
                skipped.insert(id);
            }
            Some(id) if live.contains(&id) => {
                sessions_with_container.insert(id);
                if container.state.is_dead() {
                    reports.push(Action::ReportDead {
                        session_id: id,
                        state: container.state.clone(),
                    });
                }
            }
            _ => removals.push(Action::RemoveContainer {
                session_id,
                id: container.id.clone(),
                name: container.name.clone(),
            }),
        }
    }

    for network in objects.networks.iter().filter(|n| mine(&n.labels)) {
        let session_id = session_of(&network.labels);
        match session_id {
            Some(id) if in_flight.contains(&id) => {
                skipped.insert(id);
            }
            Some(id) if live.contains(&id) => {}
            _ => network_removals.push(Action::RemoveNetwork {
                session_id,
                id: network.id.clone(),
                name: network.name.clone(),
            }),
        }
    }

    let mut missing: Vec<_> = live
        .iter()
        .filter(|id| !in_flight.contains(id) && !sessions_with_container.contains(id))
        .copied()
        .collect();
    missing.sort();
    reports.extend(missing.into_iter().map(|session_id| Action::ReportDead {
        session_id,
        state: WorkloadState::Missing,
    }));

    removals.extend(network_removals);
    removals.extend(reports);
    Plan {
        actions: removals,
        skipped_in_flight: skipped.into_iter().collect(),
    }
}

/// Describes in one sentence, for the audit log and the person, why a session is dead.
pub fn dead_reason(state: &WorkloadState) -> String {
    match state {
        WorkloadState::Exited {
            oom_killed: true, ..
        } => "workspace was killed for exceeding its memory limit".to_owned(),
        WorkloadState::Exited { exit_code, .. } => {
            format!("workspace exited with code {exit_code}")
        }
        WorkloadState::Dead => "workspace container is dead".to_owned(),
        WorkloadState::Missing => "workspace container no longer exists".to_owned(),
        other => format!("workspace is in state {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::runtime::{OwnedContainer, OwnedNetwork};

    const ME: &str = "me";

    fn labels(instance: &str, session: Option<Uuid>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([(labels::INSTANCE.to_owned(), instance.to_owned())]);
        if let Some(session) = session {
            labels.insert(labels::SESSION.to_owned(), session.to_string());
        }
        labels
    }

    fn container(instance: &str, session: Option<Uuid>, state: WorkloadState) -> OwnedContainer {
        OwnedContainer {
            id: format!("c-{session:?}"),
            name: "c".to_owned(),
            labels: labels(instance, session),
            state,
        }
    }

    fn network(instance: &str, session: Option<Uuid>) -> OwnedNetwork {
        OwnedNetwork {
            id: format!("n-{session:?}"),
            name: "n".to_owned(),
            labels: labels(instance, session),
            subnet: None,
        }
    }

    fn objects_for(instance: &str, sessions: &[(Uuid, WorkloadState)]) -> OwnedObjects {
        OwnedObjects {
            containers: sessions
                .iter()
                .map(|(id, state)| container(instance, Some(*id), state.clone()))
                .collect(),
            networks: sessions
                .iter()
                .map(|(id, _)| network(instance, Some(*id)))
                .collect(),
        }
    }

    #[test]
    fn orphans_are_removed_containers_first() {
        let orphan = Uuid::new_v4();
        let objects = objects_for(ME, &[(orphan, WorkloadState::Running)]);
        let plan = plan(&objects, ME, &HashSet::new(), &HashSet::new());
        assert_eq!(plan.actions.len(), 2);
        assert!(
            matches!(&plan.actions[0], Action::RemoveContainer { session_id: Some(id), .. } if *id == orphan)
        );
        assert!(
            matches!(&plan.actions[1], Action::RemoveNetwork { session_id: Some(id), .. } if *id == orphan)
        );
    }

    #[test]
    fn live_running_session_is_left_alone() {
        let live = Uuid::new_v4();
        let objects = objects_for(ME, &[(live, WorkloadState::Running)]);
        let plan = plan(&objects, ME, &HashSet::from([live]), &HashSet::new());
        assert!(plan.actions.is_empty(), "{plan:?}");
    }

    #[test]
    fn in_flight_session_is_skipped() {
        let launching = Uuid::new_v4();
        let objects = objects_for(ME, &[(launching, WorkloadState::Created)]);
        let plan = plan(&objects, ME, &HashSet::new(), &HashSet::from([launching]));
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert_eq!(plan.skipped_in_flight, vec![launching]);
    }

    #[test]
    fn other_instance_objects_are_ignored() {
        let theirs = Uuid::new_v4();
        let objects = objects_for(
            "other",
            &[(
                theirs,
                WorkloadState::Exited {
                    exit_code: 1,
                    oom_killed: false,
                },
            )],
        );
        let plan = plan(&objects, ME, &HashSet::new(), &HashSet::new());
        assert!(plan.actions.is_empty(), "{plan:?}");
    }

    #[test]
    fn own_legacy_labelled_orphans_are_removed() {
        let orphan = Uuid::new_v4();
        let legacy = BTreeMap::from([
            (labels::LEGACY_INSTANCE.to_owned(), ME.to_owned()),
            (labels::LEGACY_SESSION.to_owned(), orphan.to_string()),
        ]);
        let theirs = BTreeMap::from([
            (labels::LEGACY_INSTANCE.to_owned(), "other".to_owned()),
            (labels::LEGACY_SESSION.to_owned(), Uuid::new_v4().to_string()),
        ]);
        let objects = OwnedObjects {
            containers: vec![
                OwnedContainer {
                    id: "mine".to_owned(),
                    name: "mine".to_owned(),
                    labels: legacy.clone(),
                    state: WorkloadState::Running,
                },
                OwnedContainer {
                    id: "theirs".to_owned(),
                    name: "theirs".to_owned(),
                    labels: theirs,
                    state: WorkloadState::Running,
                },
            ],
            networks: vec![OwnedNetwork {
                id: "mine-net".to_owned(),
                name: "mine-net".to_owned(),
                labels: legacy,
                subnet: None,
            }],
        };

        let plan = plan(&objects, ME, &HashSet::new(), &HashSet::new());

        assert_eq!(
            plan.actions,
            vec![
                Action::RemoveContainer {
                    session_id: Some(orphan),
                    id: "mine".to_owned(),
                    name: "mine".to_owned(),
                },
                Action::RemoveNetwork {
                    session_id: Some(orphan),
                    id: "mine-net".to_owned(),
                    name: "mine-net".to_owned(),
                },
            ]
        );
    }

    #[test]
    fn exited_live_session_is_reported_dead() {
        let live = Uuid::new_v4();
        let exited = WorkloadState::Exited {
            exit_code: 137,
            oom_killed: false,
        };
        let objects = objects_for(ME, &[(live, exited.clone())]);
        let plan = plan(&objects, ME, &HashSet::from([live]), &HashSet::new());
        assert_eq!(
            plan.actions,
            vec![Action::ReportDead {
                session_id: live,
                state: exited
            }]
        );
    }

    #[test]
    fn live_session_without_container_is_reported_missing() {
        let live = Uuid::new_v4();
        let objects = OwnedObjects {
            containers: vec![],
            networks: vec![network(ME, Some(live))],
        };
        let plan = plan(&objects, ME, &HashSet::from([live]), &HashSet::new());
        assert_eq!(
            plan.actions,
            vec![Action::ReportDead {
                session_id: live,
                state: WorkloadState::Missing
            }]
        );
    }

    #[test]
    fn object_without_session_label_is_removed() {
        let objects = OwnedObjects {
            containers: vec![container(ME, None, WorkloadState::Running)],
            networks: vec![],
        };
        let plan = plan(&objects, ME, &HashSet::new(), &HashSet::new());
        assert!(matches!(
            &plan.actions[..],
            [Action::RemoveContainer {
                session_id: None,
                ..
            }]
        ));
    }

    #[test]
    fn dead_reason_names_exit_code() {
        let state = WorkloadState::Exited {
            exit_code: 137,
            oom_killed: false,
        };
        assert_eq!(dead_reason(&state), "workspace exited with code 137");
    }
}
