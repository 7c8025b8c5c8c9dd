//! BPMN 2.0 XML -> an executable process graph, checked before anything runs.
//!
//! Supported (inside one `<process>`): `startEvent`, `endEvent`, `serviceTask`,
//! `exclusiveGateway` (conditions on outgoing flows, optional `default`),
//! `parallelGateway` (fork and join), `intermediateCatchEvent` with a
//! `timerEventDefinition/timeDuration` (ISO 8601, e.g. `PT30S`), and
//! `sequenceFlow` with an optional `conditionExpression` ([`Expr`]).
//! Documentation, extension elements, lanes, text annotations, associations and
//! the diagram are ignored; any other element is an error naming it.
//!
//! Service tasks say what they do with attributes in the namespace [`NS`]:
//! `lifecycle:type="http"` with `lifecycle:url` (and `lifecycle:method`, default
//! POST), `lifecycle:type="kafka"` with `lifecycle:topic`, or
//! `lifecycle:type="profile-update"` with `lifecycle:attributes` (a JSON object
//! merged into the user's attributes). `lifecycle:maxRetries` on the process (or
//! a task) bounds retries.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::expr::Expr;

/// The namespace of the project's extension attributes.
pub const NS: &str = "https://lifecycle.dev/schema/bpmn";
const BPMN_NS: &str = "http://www.omg.org/spec/BPMN/20100524/MODEL";

/// What a service task does.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskAction {
    /// Call an HTTP endpoint with the instance's variables as JSON.
    Http {
        /// Target URL.
        url: String,
        /// HTTP method.
        method: String,
    },
    /// Produce the instance's variables to a Kafka topic.
    Kafka {
        /// Topic name.
        topic: String,
    },
    /// Merge attributes into the user's profile attributes.
    ProfileUpdate {
        /// The attributes to merge.
        attributes: serde_json::Map<String, serde_json::Value>,
    },
}

/// A node of the process graph.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// Where an instance starts.
    Start,
    /// Where a path ends.
    End,
    /// A service task.
    Task {
        /// What it does.
        action: TaskAction,
        /// Retries before an incident (overrides the process's).
        max_retries: Option<u32>,
    },
    /// An exclusive gateway: the first outgoing flow whose condition holds (in
    /// document order), else the default flow.
    Exclusive {
        /// The default flow's id.
        default: Option<String>,
    },
    /// A parallel gateway: forks to every outgoing flow; joins by waiting for every incoming one.
    Parallel,
    /// Waits, then continues.
    Timer {
        /// How long.
        duration: Duration,
    },
}

/// A node with its connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// BPMN id.
    pub id: String,
    /// Optional name.
    pub name: Option<String>,
    /// What it is.
    pub kind: NodeKind,
    /// Incoming flow ids.
    pub incoming: Vec<String>,
    /// Outgoing flow ids, in document order.
    pub outgoing: Vec<String>,
}

/// A sequence flow.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// BPMN id.
    pub id: String,
    /// Source node id.
    pub source: String,
    /// Target node id.
    pub target: String,
    /// Condition, if any.
    pub condition: Option<Expr>,
}

/// A checked, executable process.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    /// The process id.
    pub id: String,
    /// Its name.
    pub name: Option<String>,
    /// The start event's id.
    pub start: String,
    /// Nodes by id.
    pub nodes: BTreeMap<String, Node>,
    /// Flows by id.
    pub flows: BTreeMap<String, Flow>,
    /// Retries of a failing task before an incident (default 3).
    pub max_retries: u32,
}

/// Why a BPMN document was refused: the element, its id when it has one, and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{element}{}: {message}", .id.as_ref().map(|i| format!(" '{i}'")).unwrap_or_default())]
pub struct BpmnError {
    /// The element's local name (`serviceTask`, `sequenceFlow`, `definitions`, ...).
    pub element: String,
    /// Its id.
    pub id: Option<String>,
    /// The problem.
    pub message: String,
}

fn fail(element: &str, id: Option<&str>, message: impl Into<String>) -> BpmnError {
    BpmnError { element: element.to_owned(), id: id.map(str::to_owned), message: message.into() }
}

/// Parses an ISO 8601 duration (`P1DT2H30M`, `PT45S`, `PT0.5S`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let rest = s.trim().strip_prefix('P')?;
    let (date, time) = rest.split_once('T').unwrap_or((rest, ""));
    let mut secs = 0.0;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
            } else {
                let (_, mult) = units.iter().find(|(u, _)| *u == c)?;
                secs += num.parse::<f64>().ok()? * mult;
                num.clear();
            }
        }
        num.is_empty().then_some(())
    };
    take(date, &[('W', 604_800.0), ('D', 86_400.0)])?;
    take(time, &[('H', 3_600.0), ('M', 60.0), ('S', 1.0)])?;
    (rest != "T" && !rest.is_empty() && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

const IGNORED: [&str; 7] =
    ["documentation", "extensionElements", "laneSet", "textAnnotation", "association", "incoming", "outgoing"];
const SUPPORTED: &str = "startEvent, endEvent, serviceTask, exclusiveGateway, parallelGateway, \
    intermediateCatchEvent (timer), sequenceFlow";

fn ext<'a>(n: &roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    n.attribute((NS, name))
}

fn task_action(n: &roxmltree::Node<'_, '_>, id: &str) -> Result<TaskAction, BpmnError> {
    let need = |name: &str| {
        ext(n, name)
            .filter(|v| !v.trim().is_empty())
            .map(str::to_owned)
            .ok_or_else(|| fail("serviceTask", Some(id), format!("needs lifecycle:{name}")))
    };
    match ext(n, "type") {
        Some("http") => {
            let url = need("url")?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(fail("serviceTask", Some(id), format!("lifecycle:url '{url}' is not an http(s) URL")));
            }
            let method = ext(n, "method").unwrap_or("POST").to_ascii_uppercase();
            if !["POST", "PUT", "PATCH", "GET", "DELETE"].contains(&method.as_str()) {
                return Err(fail("serviceTask", Some(id), format!("lifecycle:method '{method}' is not supported")));
            }
            Ok(TaskAction::Http { url, method })
        }
        Some("kafka") => Ok(TaskAction::Kafka { topic: need("topic")? }),
        Some("profile-update") => {
            let text = need("attributes")?;
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(attributes)) => Ok(TaskAction::ProfileUpdate { attributes }),
                _ => Err(fail("serviceTask", Some(id), "lifecycle:attributes must be a JSON object")),
            }
        }
        Some(other) => Err(fail(
            "serviceTask",
            Some(id),
            format!("lifecycle:type '{other}' is not one of http, kafka, profile-update"),
        )),
        None => Err(fail("serviceTask", Some(id), "needs lifecycle:type (http, kafka or profile-update)")),
    }
}

fn retries(n: &roxmltree::Node<'_, '_>, element: &str, id: Option<&str>) -> Result<Option<u32>, BpmnError> {
    ext(n, "maxRetries")
        .map(|v| v.parse().map_err(|_| fail(element, id, format!("lifecycle:maxRetries '{v}' is not a whole number"))))
        .transpose()
}

fn timer(n: &roxmltree::Node<'_, '_>, id: &str) -> Result<Duration, BpmnError> {
    let def = n
        .children()
        .find(|c| c.tag_name().name() == "timerEventDefinition")
        .ok_or_else(|| fail("intermediateCatchEvent", Some(id), "only timer catch events are supported"))?;
    let text =
        def.children().find(|c| c.tag_name().name() == "timeDuration").and_then(|d| d.text()).ok_or_else(|| {
            fail("timerEventDefinition", Some(id), "needs a timeDuration (timeDate and timeCycle are not supported)")
        })?;
    parse_duration(text).ok_or_else(|| {
        fail("timeDuration", Some(id), format!("'{}' is not an ISO 8601 duration like PT30S", text.trim()))
    })
}

impl Process {
    /// Parses and checks a BPMN 2.0 document holding one executable process.
    pub fn parse(xml: &str) -> Result<Self, BpmnError> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| fail("document", None, format!("not XML: {e}")))?;
        let root = doc.root_element();
        if root.tag_name().name() != "definitions" || root.tag_name().namespace() != Some(BPMN_NS) {
            return Err(fail(root.tag_name().name(), None, format!("the root must be <definitions> in {BPMN_NS}")));
        }
        let processes: Vec<_> = root.children().filter(|c| c.tag_name().name() == "process").collect();
        let [process] = processes.as_slice() else {
            return Err(fail("definitions", None, format!("needs exactly one <process>, found {}", processes.len())));
        };
        let pid = process.attribute("id").ok_or_else(|| fail("process", None, "needs an id"))?.to_owned();
        let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
        let mut flows: BTreeMap<String, Flow> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for n in process.children().filter(roxmltree::Node::is_element) {
            let element = n.tag_name().name();
            if IGNORED.contains(&element) {
                continue;
            }
            let id = n.attribute("id").ok_or_else(|| fail(element, None, "needs an id"))?.to_owned();
            if nodes.contains_key(&id) || flows.contains_key(&id) {
                return Err(fail(element, Some(&id), "duplicate id"));
            }
            let kind = match element {
                "sequenceFlow" => {
                    let attr = |a: &str| {
                        n.attribute(a).map(str::to_owned).ok_or_else(|| fail(element, Some(&id), format!("needs {a}")))
                    };
                    let condition = match n.children().find(|c| c.tag_name().name() == "conditionExpression") {
                        Some(c) => Some(
                            Expr::parse(c.text().unwrap_or_default())
                                .map_err(|e| fail("conditionExpression", Some(&id), format!("bad condition: {e}")))?,
                        ),
                        None => None,
                    };
                    let flow =
                        Flow { id: id.clone(), source: attr("sourceRef")?, target: attr("targetRef")?, condition };
                    flows.insert(id.clone(), flow);
                    order.push(id);
                    continue;
                }
                "startEvent" => {
                    if n.children().any(|c| c.tag_name().name().ends_with("EventDefinition")) {
                        return Err(fail(element, Some(&id), "only plain (none) start events are supported"));
                    }
                    NodeKind::Start
                }
                "endEvent" => NodeKind::End,
                "serviceTask" => {
                    NodeKind::Task { action: task_action(&n, &id)?, max_retries: retries(&n, element, Some(&id))? }
                }
                "exclusiveGateway" => NodeKind::Exclusive { default: n.attribute("default").map(str::to_owned) },
                "parallelGateway" => NodeKind::Parallel,
                "intermediateCatchEvent" => NodeKind::Timer { duration: timer(&n, &id)? },
                other => {
                    return Err(fail(other, Some(&id), format!("unsupported BPMN element; supported: {SUPPORTED}")));
                }
            };
            let name = n.attribute("name").map(str::to_owned);
            nodes.insert(id.clone(), Node { id, name, kind, incoming: vec![], outgoing: vec![] });
        }
        for fid in &order {
            let f = &flows[fid];
            for (end, node) in [("sourceRef", &f.source), ("targetRef", &f.target)] {
                if !nodes.contains_key(node) {
                    return Err(fail(
                        "sequenceFlow",
                        Some(fid),
                        format!("{end} '{node}' is not a node of the process"),
                    ));
                }
            }
            let (source, target) = (f.source.clone(), f.target.clone());
            if let Some(n) = nodes.get_mut(&source) {
                n.outgoing.push(fid.clone());
            }
            if let Some(n) = nodes.get_mut(&target) {
                n.incoming.push(fid.clone());
            }
        }
        let max_retries = retries(process, "process", Some(&pid))?.unwrap_or(3);
        let process = Self::check(pid, process.attribute("name").map(str::to_owned), nodes, flows, max_retries)?;
        Ok(process)
    }

    fn check(
        id: String,
        name: Option<String>,
        nodes: BTreeMap<String, Node>,
        flows: BTreeMap<String, Flow>,
        max_retries: u32,
    ) -> Result<Self, BpmnError> {
        let starts: Vec<&Node> = nodes.values().filter(|n| n.kind == NodeKind::Start).collect();
        let [start] = starts.as_slice() else {
            return Err(fail("process", Some(&id), format!("needs exactly one startEvent, found {}", starts.len())));
        };
        if !nodes.values().any(|n| n.kind == NodeKind::End) {
            return Err(fail("process", Some(&id), "needs an endEvent"));
        }
        for n in nodes.values() {
            let element = match &n.kind {
                NodeKind::Start => "startEvent",
                NodeKind::End => "endEvent",
                NodeKind::Task { .. } => "serviceTask",
                NodeKind::Exclusive { .. } => "exclusiveGateway",
                NodeKind::Parallel => "parallelGateway",
                NodeKind::Timer { .. } => "intermediateCatchEvent",
            };
            let (ins, outs) = (n.incoming.len(), n.outgoing.len());
            let problem = match &n.kind {
                NodeKind::Start if ins > 0 => Some("a start event has no incoming flow".to_owned()),
                NodeKind::End if outs > 0 => Some("an end event has no outgoing flow".to_owned()),
                NodeKind::Start | NodeKind::Task { .. } | NodeKind::Timer { .. } if outs != 1 => {
                    Some(format!("needs exactly one outgoing flow (has {outs}); branch with a gateway"))
                }
                NodeKind::Exclusive { .. } | NodeKind::Parallel if outs == 0 => Some("needs an outgoing flow".into()),
                _ if n.kind != NodeKind::Start && ins == 0 => Some("has no incoming flow".to_owned()),
                NodeKind::Exclusive { default } => {
                    if let Some(d) = default
                        && !n.outgoing.contains(d)
                    {
                        Some(format!("default flow '{d}' is not one of its outgoing flows"))
                    } else if outs > 1 {
                        n.outgoing
                            .iter()
                            .find(|f| Some(*f) != default.as_ref() && flows[*f].condition.is_none())
                            .map(|f| format!("outgoing flow '{f}' needs a conditionExpression (or be the default)"))
                    } else {
                        None
                    }
                }
                _ => None,
            };
            if let Some(message) = problem {
                return Err(fail(element, Some(&n.id), message));
            }
        }
        // Every node must be reachable from the start.
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut queue: VecDeque<&str> = VecDeque::from([start.id.as_str()]);
        while let Some(id) = queue.pop_front() {
            if seen.insert(id) {
                queue.extend(nodes[id].outgoing.iter().map(|f| flows[f].target.as_str()));
            }
        }
        if let Some(lost) = nodes.keys().find(|k| !seen.contains(k.as_str())) {
            return Err(fail("process", Some(&id), format!("node '{lost}' cannot be reached from the start event")));
        }
        Ok(Self { id, name, start: start.id.clone(), nodes, flows, max_retries })
    }

    /// Retries allowed for task `node` (its own, else the process's).
    pub fn retries_of(&self, node: &str) -> u32 {
        match self.nodes.get(node).map(|n| &n.kind) {
            Some(NodeKind::Task { max_retries: Some(r), .. }) => *r,
            _ => self.max_retries,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The acceptance workflow: gateway on the purchase amount, a webhook, a timer.
    pub(crate) const PURCHASE_FOLLOW_UP: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:lifecycle="https://lifecycle.dev/schema/bpmn" id="defs" targetNamespace="https://example.com">
  <bpmn:process id="purchase_follow_up" name="Purchase follow-up" isExecutable="true" lifecycle:maxRetries="4">
    <bpmn:documentation>Thank big spenders, wait, then tag them.</bpmn:documentation>
    <bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="big"/>
    <bpmn:exclusiveGateway id="big" default="f_small"/>
    <bpmn:sequenceFlow id="f_big" sourceRef="big" targetRef="thank">
      <bpmn:conditionExpression>${amount >= 100}</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="f_small" sourceRef="big" targetRef="done"/>
    <bpmn:serviceTask id="thank" name="Thank you" lifecycle:type="http" lifecycle:url="http://127.0.0.1:9/hook"/>
    <bpmn:sequenceFlow id="f2" sourceRef="thank" targetRef="wait"/>
    <bpmn:intermediateCatchEvent id="wait">
      <bpmn:timerEventDefinition><bpmn:timeDuration>PT2S</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:intermediateCatchEvent>
    <bpmn:sequenceFlow id="f3" sourceRef="wait" targetRef="split"/>
    <bpmn:parallelGateway id="split"/>
    <bpmn:sequenceFlow id="f4" sourceRef="split" targetRef="tag"/>
    <bpmn:sequenceFlow id="f5" sourceRef="split" targetRef="emit"/>
    <bpmn:serviceTask id="tag" lifecycle:type="profile-update" lifecycle:attributes='{"vip": true}' lifecycle:maxRetries="1"/>
    <bpmn:serviceTask id="emit" lifecycle:type="kafka" lifecycle:topic="workflow.events"/>
    <bpmn:sequenceFlow id="f6" sourceRef="tag" targetRef="join"/>
    <bpmn:sequenceFlow id="f7" sourceRef="emit" targetRef="join"/>
    <bpmn:parallelGateway id="join"/>
    <bpmn:sequenceFlow id="f8" sourceRef="join" targetRef="done"/>
    <bpmn:endEvent id="done"/>
  </bpmn:process>
</bpmn:definitions>"#;

    #[test]
    fn the_acceptance_workflow_parses() -> Result<(), BpmnError> {
        let p = Process::parse(PURCHASE_FOLLOW_UP)?;
        assert_eq!((p.id.as_str(), p.start.as_str(), p.max_retries), ("purchase_follow_up", "start", 4));
        assert_eq!(p.nodes["big"].kind, NodeKind::Exclusive { default: Some("f_small".into()) });
        assert_eq!(p.nodes["big"].outgoing, vec!["f_big", "f_small"]);
        assert_eq!(p.nodes["wait"].kind, NodeKind::Timer { duration: Duration::from_secs(2) });
        assert_eq!(p.nodes["join"].incoming.len(), 2);
        assert_eq!(
            p.nodes["thank"].kind,
            NodeKind::Task {
                action: TaskAction::Http { url: "http://127.0.0.1:9/hook".into(), method: "POST".into() },
                max_retries: None
            }
        );
        assert_eq!((p.retries_of("thank"), p.retries_of("tag")), (4, 1));
        let cond = p.flows["f_big"].condition.as_ref().map(|c| c.test(&serde_json::json!({"amount": 150})));
        assert_eq!(cond, Some(Ok(true)));
        Ok(())
    }

    fn error_of(xml: &str) -> (String, Option<String>, String) {
        match Process::parse(xml) {
            Err(e) => (e.element, e.id, e.message),
            Ok(p) => panic!("accepted: {p:?}"),
        }
    }

    #[test]
    fn unsupported_elements_are_named() {
        let xml = PURCHASE_FOLLOW_UP
            .replace(r#"<bpmn:endEvent id="done"/>"#, r#"<bpmn:endEvent id="done"/><bpmn:userTask id="approve"/>"#);
        let (element, id, message) = error_of(&xml);
        assert_eq!((element.as_str(), id.as_deref()), ("userTask", Some("approve")));
        assert!(message.starts_with("unsupported BPMN element"), "{message}");
    }

    #[test]
    fn broken_graphs_are_refused_with_the_culprit() {
        let cases = [
            (r#"targetRef="thank">"#, r#"targetRef="nowhere">"#, ("sequenceFlow", "f_big", "targetRef 'nowhere'")),
            (
                r#"lifecycle:type="kafka" lifecycle:topic="workflow.events""#,
                r#"lifecycle:type="kafka""#,
                ("serviceTask", "emit", "needs lifecycle:topic"),
            ),
            ("${amount >= 100}", "${amount => 100}", ("conditionExpression", "f_big", "bad condition")),
            ("PT2S", "soon", ("timeDuration", "wait", "not an ISO 8601 duration")),
            (r#" default="f_small""#, "", ("exclusiveGateway", "big", "'f_small' needs a conditionExpression")),
            (
                r#"<bpmn:sequenceFlow id="f2" sourceRef="thank" targetRef="wait"/>"#,
                "",
                ("serviceTask", "thank", "exactly one outgoing"),
            ),
            (
                r#"lifecycle:url="http://127.0.0.1:9/hook""#,
                r#"lifecycle:url="ftp://x""#,
                ("serviceTask", "thank", "not an http(s) URL"),
            ),
            (
                r#"lifecycle:attributes='{"vip": true}'"#,
                r#"lifecycle:attributes='[1]'"#,
                ("serviceTask", "tag", "JSON object"),
            ),
        ];
        for (from, to, (element, id, fragment)) in cases {
            assert!(PURCHASE_FOLLOW_UP.contains(from), "{from}");
            let (e, i, m) = error_of(&PURCHASE_FOLLOW_UP.replace(from, to));
            assert_eq!((e.as_str(), i.as_deref()), (element, Some(id)), "{m}");
            assert!(m.contains(fragment), "{element} {id}: {m}");
        }
    }

    #[test]
    fn documents_that_are_not_one_process_are_refused() {
        assert_eq!(error_of("<not xml").0, "document");
        assert_eq!(error_of("<definitions/>").0, "definitions");
        let two = PURCHASE_FOLLOW_UP.replace("</bpmn:definitions>", r#"<bpmn:process id="p2"/></bpmn:definitions>"#);
        assert!(error_of(&two).2.contains("exactly one <process>, found 2"));
        let no_start = PURCHASE_FOLLOW_UP.replace(r#"<bpmn:startEvent id="start"/>"#, "");
        assert_eq!(error_of(&no_start).0, "sequenceFlow");
    }

    #[test]
    fn iso_durations() {
        assert_eq!(parse_duration("PT30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("PT1H30M"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("P1DT1S"), Some(Duration::from_secs(86_401)));
        assert_eq!(parse_duration("PT0.5S"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("P2W"), Some(Duration::from_secs(1_209_600)));
        for bad in ["30s", "P", "PT", "PT5X", "PT5", ""] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
