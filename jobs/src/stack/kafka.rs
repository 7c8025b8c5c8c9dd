//! Apache Kafka from Maven Central: the broker's jars fetched once by Maven into
//! the cache, one KRaft node acting as broker and controller, its storage
//! formatted once under the project's data directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::proc::{ensure_tool, log_file, pid_file, port_open, running_pid, spawn_detached, stop_within, tail};
use super::{ServiceStatus, StackConfig, StackError, err, wait_for};

/// The pom listing the broker and its slf4j binding (`@KAFKA_VERSION@` filled in).
const POM: &str = include_str!("kafka-pom.xml");

/// Where the broker's jars are cached.
fn libs_dir(s: &StackConfig) -> PathBuf {
    s.cache_dir.join(format!("kafka-{}", s.kafka_version)).join("libs")
}

/// Fetches the broker's jars with Maven unless they are cached; returns the folder.
fn install(s: &StackConfig) -> Result<PathBuf, StackError> {
    let libs = libs_dir(s);
    let done = libs.join(".complete");
    if done.is_file() {
        return Ok(libs);
    }
    ensure_tool("kafka", "java", "openjdk-17-jre-headless")?;
    ensure_tool("kafka", "mvn", "maven")?;
    let root = libs.parent().unwrap_or(&s.cache_dir).to_path_buf();
    std::fs::create_dir_all(&root).map_err(|e| err("kafka", e.to_string()))?;
    let pom = root.join("pom.xml");
    std::fs::write(&pom, POM.replace("@KAFKA_VERSION@", &s.kafka_version)).map_err(|e| err("kafka", e.to_string()))?;
    let staging = root.join("libs.partial");
    let _ = std::fs::remove_dir_all(&staging);
    println!(
        "kafka: fetching Apache Kafka {} from Maven Central into {} (first time only)...",
        s.kafka_version,
        libs.display()
    );
    let out = Command::new("mvn")
        .args(["-B", "-q", "-f"])
        .arg(&pom)
        .arg(format!("-Dmaven.repo.local={}", s.cache_dir.join("m2").display()))
        .arg("org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", staging.display()))
        .arg("-DincludeScope=runtime")
        .output()
        .map_err(|e| err("kafka", format!("mvn: {e}")))?;
    if !out.status.success() {
        return Err(err(
            "kafka",
            format!(
                "fetching the broker's jars failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    check_libs(&staging)?;
    let _ = std::fs::remove_dir_all(&libs);
    std::fs::rename(&staging, &libs).map_err(|e| err("kafka", e.to_string()))?;
    std::fs::write(&done, &s.kafka_version).map_err(|e| err("kafka", e.to_string()))?;
    Ok(libs)
}

/// The jar folder holds the broker, exactly one slf4j API and one binding
/// (two bindings make slf4j pick one at random; none makes the broker silent).
fn check_libs(libs: &Path) -> Result<(), StackError> {
    let names: Vec<String> = std::fs::read_dir(libs)
        .map_err(|e| err("kafka", e.to_string()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let count = |prefix: &str| names.iter().filter(|n| n.starts_with(prefix)).count();
    let problems: Vec<String> = [("kafka_2.13-", 1), ("slf4j-api-", 1), ("log4j-slf4j-impl-", 1)]
        .iter()
        .filter(|(prefix, want)| count(prefix) != *want)
        .map(|(prefix, want)| format!("{} jars named {prefix}* (want {want})", count(prefix)))
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(err("kafka", format!("unexpected jars: {}", problems.join(", ")))) }
}

/// One KRaft node: broker and controller in one process.
struct Node {
    /// Its node id (1 for the stack's single node).
    id: u16,
    /// Where its configuration, cluster id and log segments live.
    dir: PathBuf,
    /// Client listener port.
    port: u16,
    /// The client port it tells clients to connect to: its own, or that of a
    /// proxy in front of it (tests that slow or cut the network path).
    advertised_port: u16,
    /// Controller listener port.
    controller_port: u16,
    /// The static controller quorum (`id@host:port,...`) of a multi-node
    /// cluster; `None` for the stack's single standalone node.
    voters: Option<String>,
    /// Further `key=value` lines of server.properties (tests).
    extra: Vec<String>,
}

impl Node {
    fn of(s: &StackConfig) -> Self {
        Self {
            id: 1,
            dir: s.data_dir.join("kafka"),
            port: s.kafka_port,
            advertised_port: s.kafka_port,
            controller_port: s.kafka_controller_port,
            voters: None,
            extra: Vec::new(),
        }
    }

    /// Nodes in the quorum: replicas of the internal topics follow it (3 at most).
    fn replication(&self) -> usize {
        self.voters.as_ref().map_or(1, |v| v.split(',').count().min(3))
    }

    fn properties(&self) -> String {
        let (id, port, aport, cport) = (self.id, self.port, self.advertised_port, self.controller_port);
        let data = self.dir.join("data");
        let quorum = match &self.voters {
            Some(v) => format!("controller.quorum.voters={v}"),
            None => format!("controller.quorum.bootstrap.servers=127.0.0.1:{cport}"),
        };
        // One node: every internal topic on it. Three: RF 3 and two in sync,
        // so acknowledged writes survive the loss of any one node.
        let rf = self.replication();
        let isr = rf.min(2);
        format!(
            "# Written by `lifecycle stack up`; edits are overwritten at the next start.\n\
             process.roles=broker,controller\n\
             node.id={id}\n\
             {quorum}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{aport},CONTROLLER://127.0.0.1:{cport}\n\
             listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             log.dirs={data}\n\
             num.partitions=1\n\
             auto.create.topics.enable=false\n\
             default.replication.factor={rf}\n\
             offsets.topic.replication.factor={rf}\n\
             transaction.state.log.replication.factor={rf}\n\
             transaction.state.log.min.isr={isr}\n\
             share.coordinator.state.topic.replication.factor={rf}\n\
             share.coordinator.state.topic.min.isr={isr}\n\
             group.initial.rebalance.delay.ms=0\n\
             # Abort transactions of producers that died within a second of their\n\
             # timeout (default: checked every 10 s), so read_committed readers\n\
             # wait at most about kafka.transaction_timeout_ms behind a crashed stage.\n\
             transaction.abort.timed.out.transaction.cleanup.interval.ms=1000\n\
             {extra}",
            data = data.display(),
            extra = self.extra.iter().map(|l| format!("{l}\n")).collect::<String>()
        )
    }

    /// log4j2 configuration: `server.log` under the stack's log folder, rolled at 100 MB.
    fn log_config(&self, logs: &Path) -> String {
        format!(
            "status = warn\n\
             appender.file.type = RollingFile\n\
             appender.file.name = file\n\
             appender.file.fileName = {logs}/server.log\n\
             appender.file.filePattern = {logs}/server.log.%i\n\
             appender.file.layout.type = PatternLayout\n\
             appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
             appender.file.policies.type = Policies\n\
             appender.file.policies.size.type = SizeBasedTriggeringPolicy\n\
             appender.file.policies.size.size = 100MB\n\
             appender.file.strategy.type = DefaultRolloverStrategy\n\
             appender.file.strategy.max = 3\n\
             rootLogger.level = info\n\
             rootLogger.appenderRef.file.ref = file\n\
             logger.request.name = kafka.request.logger\n\
             logger.request.level = warn\n",
            logs = logs.display()
        )
    }
}

/// A new cluster id: 16 random bytes, URL-safe base64 without padding (what
/// `kafka-storage.sh random-uuid` prints).
fn new_cluster_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

fn java(libs: &Path) -> Command {
    let mut c = Command::new("java");
    c.arg("-cp").arg(format!("{}/*", libs.display()));
    c
}

/// Writes the node's configuration and formats its storage unless it already is.
fn prepare(node: &Node, libs: &Path, logs: &Path) -> Result<PathBuf, StackError> {
    let io = |e: std::io::Error| err("kafka", e.to_string());
    std::fs::create_dir_all(node.dir.join("data")).map_err(io)?;
    std::fs::create_dir_all(logs).map_err(io)?;
    let props = node.dir.join("server.properties");
    std::fs::write(&props, node.properties()).map_err(io)?;
    std::fs::write(node.dir.join("log4j2.properties"), node.log_config(logs)).map_err(io)?;
    let id_file = node.dir.join("cluster.id");
    let id = match std::fs::read_to_string(&id_file) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
        _ => {
            let id = new_cluster_id();
            std::fs::write(&id_file, &id).map_err(io)?;
            id
        }
    };
    if !node.dir.join("data/meta.properties").is_file() {
        let mut format = java(libs);
        format.args(["kafka.tools.StorageTool", "format"]);
        // A static quorum is named in the configuration; a single node bootstraps its own.
        if node.voters.is_none() {
            format.arg("--standalone");
        }
        // One replica: eligible leader replicas (KIP-966) cannot help, and a
        // node killed with -9 comes back as an unclean election of its own
        // partitions, which can lose transaction markers and leave
        // read_committed readers stuck for good (docs/reliability.md).
        if node.replication() == 1 {
            format.args(["--feature", "eligible.leader.replicas.version=0"]);
        }
        let out = format
            .args(["--ignore-formatted", "-t", &id, "-c"])
            .arg(&props)
            .output()
            .map_err(|e| err("kafka", format!("java (storage format): {e}")))?;
        if !out.status.success() {
            return Err(err(
                "kafka",
                format!("formatting the storage failed: {}", String::from_utf8_lossy(&out.stderr)),
            ));
        }
    }
    Ok(props)
}

/// The command that runs a prepared node.
fn node_command(node: &Node, libs: &Path, logs: &Path, props: &Path, heap_mib: u32) -> Command {
    let mut cmd = Command::new("java");
    cmd.args([
        &format!("-Xms{heap_mib}m"),
        &format!("-Xmx{heap_mib}m"),
        "-server",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
    ])
    .arg(format!("-Dkafka.logs.dir={}", logs.display()))
    .arg(format!("-Dlog4j2.configurationFile={}", node.dir.join("log4j2.properties").display()))
    .arg("-cp")
    .arg(format!("{}/*", libs.display()))
    .arg("kafka.Kafka")
    .arg(props)
    .env_remove("JMX_PORT")
    .env_remove("KAFKA_OPTS");
    cmd
}

pub(super) async fn up(s: &StackConfig) -> Result<(), StackError> {
    if port_open(s.kafka_port).await {
        println!("kafka: already answering on 127.0.0.1:{}", s.kafka_port);
        return Ok(());
    }
    let libs = install(s)?;
    let node = Node::of(s);
    let logs = s.data_dir.join("logs/kafka");
    let props = prepare(&node, &libs, &logs)?;
    let cmd = node_command(&node, &libs, &logs, &props, s.kafka_heap_mib);
    let log = log_file(s, "kafka");
    let pid_path = pid_file(s, "kafka");
    let pid = spawn_detached("kafka", cmd, &log, &pid_path)?;
    let port = s.kafka_port;
    // The client listener opens only once the broker is ready to serve.
    let open_or_dead = || async { port_open(port).await || running_pid(&pid_path).is_none() };
    if !wait_for(Duration::from_secs(90), open_or_dead).await || !port_open(port).await {
        let server_log = logs.join("server.log");
        return Err(err(
            "kafka",
            format!(
                "not listening after 90 s; {}:\n{}\n{}:\n{}",
                log.display(),
                tail(&log, 10),
                server_log.display(),
                tail(&server_log, 20)
            ),
        ));
    }
    println!(
        "kafka: Apache Kafka {} started, pid {pid}, 127.0.0.1:{port} (controller :{}), data {}",
        s.kafka_version,
        node.controller_port,
        node.dir.display()
    );
    Ok(())
}

pub(super) fn down(s: &StackConfig) -> Result<(), StackError> {
    // A clean shutdown moves leadership and closes the log segments; it takes a
    // few seconds, so the broker gets longer than the other services.
    if stop_within("kafka", &pid_file(s, "kafka"), Duration::from_secs(60))? {
        println!("kafka: stopped");
    }
    Ok(())
}

pub(super) async fn status(s: &StackConfig) -> ServiceStatus {
    let pid = running_pid(&pid_file(s, "kafka"));
    ServiceStatus {
        name: "kafka",
        addr: format!("127.0.0.1:{}", s.kafka_port),
        up: port_open(s.kafka_port).await,
        detail: pid.map_or_else(
            || "not started by this project".into(),
            |p| {
                format!(
                    "Apache Kafka {}, pid {p}, log {}",
                    s.kafka_version,
                    s.data_dir.join("logs/kafka/server.log").display()
                )
            },
        ),
    }
}

/// A multi-node Apache Kafka cluster on 127.0.0.1 for tests of replication and
/// broker loss: `n` KRaft nodes, each broker and controller, with a static
/// quorum, internal topics at RF 3 and `min.insync.replicas` 2. Node `i` (from
/// 0) listens on `first_port + 2i` (clients) and `first_port + 2i + 1`
/// (controller); its data and logs are under `dir/node-<i+1>`. Every start
/// formats a fresh cluster (a previous run's processes, found by their pid
/// files, are killed first); dropping the value kills the nodes.
pub struct Cluster {
    libs: PathBuf,
    heap_mib: u32,
    nodes: Vec<(Node, Option<std::process::Child>)>,
}

impl Cluster {
    /// Formats and starts the nodes and waits until every one serves clients.
    pub async fn start(
        s: &StackConfig,
        dir: &Path,
        first_port: u16,
        n: u16,
        heap_mib: u32,
    ) -> Result<Self, StackError> {
        Self::start_with(s, dir, first_port, n, heap_mib, &[], &[]).await
    }

    /// As [`Cluster::start`], but node `i` tells clients to connect to
    /// `advertised[i]` (a proxy that forwards to its own port) when given, and
    /// every node's server.properties gets the further `key=value` lines `extra`.
    pub async fn start_with(
        s: &StackConfig,
        dir: &Path,
        first_port: u16,
        n: u16,
        heap_mib: u32,
        advertised: &[u16],
        extra: &[&str],
    ) -> Result<Self, StackError> {
        let io = |e: std::io::Error| err("kafka cluster", e.to_string());
        let libs = install(s)?;
        if dir.exists() {
            for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
                let pid_path = entry.path().join("node.pid");
                if running_pid(&pid_path).is_some() {
                    stop_within("kafka cluster", &pid_path, Duration::from_secs(1))?;
                }
            }
            std::fs::remove_dir_all(dir).map_err(io)?;
        }
        let voters: Vec<String> = (0..n).map(|i| format!("{}@127.0.0.1:{}", i + 1, first_port + 2 * i + 1)).collect();
        let id = new_cluster_id();
        let mut cluster = Self { libs, heap_mib, nodes: Vec::new() };
        for i in 0..n {
            let node = Node {
                id: i + 1,
                dir: dir.join(format!("node-{}", i + 1)),
                port: first_port + 2 * i,
                advertised_port: advertised.get(usize::from(i)).copied().unwrap_or(first_port + 2 * i),
                controller_port: first_port + 2 * i + 1,
                voters: Some(voters.join(",")),
                extra: extra.iter().map(|l| (*l).to_owned()).collect(),
            };
            if port_open(node.port).await || port_open(node.controller_port).await {
                return Err(err(
                    "kafka cluster",
                    format!("port {} or {} is taken by another process", node.port, node.controller_port),
                ));
            }
            std::fs::create_dir_all(&node.dir).map_err(io)?;
            std::fs::write(node.dir.join("cluster.id"), &id).map_err(io)?;
            cluster.nodes.push((node, None));
        }
        // Every node is started before any is waited for: a broker serves
        // clients only once the controllers have a quorum.
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// `127.0.0.1:<port>,...` of every node, for `kafka.bootstrap_servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.nodes.iter().map(|(n, _)| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// The broker log of node `i` (from 0).
    pub fn server_log(&self, i: usize) -> PathBuf {
        self.nodes[i].0.dir.join("logs/server.log")
    }

    fn spawn(&mut self, i: usize) -> Result<(), StackError> {
        let (node, child) = &mut self.nodes[i];
        let logs = node.dir.join("logs");
        let props = prepare(node, &self.libs, &logs)?;
        let mut cmd = node_command(node, &self.libs, &logs, &props, self.heap_mib);
        let out = std::fs::File::create(logs.join("stdout.log")).map_err(|e| err("kafka cluster", e.to_string()))?;
        let out2 = out.try_clone().map_err(|e| err("kafka cluster", e.to_string()))?;
        let spawned = cmd
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(out2)
            .spawn()
            .map_err(|e| err("kafka cluster", format!("spawn: {e}")))?;
        std::fs::write(node.dir.join("node.pid"), spawned.id().to_string())
            .map_err(|e| err("kafka cluster", e.to_string()))?;
        *child = Some(spawned);
        Ok(())
    }

    async fn wait_ready(&mut self, i: usize) -> Result<(), StackError> {
        let port = self.nodes[i].0.port;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            if port_open(port).await {
                return Ok(());
            }
            if let Some(child) = self.nodes[i].1.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(err(
                    "kafka cluster",
                    format!("node {} exited ({status}):\n{}", i + 1, tail(&self.server_log(i), 20)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(err("kafka cluster", format!("node {} not serving after 120 s:\n{}", i + 1, tail(&self.server_log(i), 20))))
    }

    /// Kills node `i` with SIGKILL: no clean shutdown, no leadership handed over.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its data and waits until it serves clients.
    pub async fn restart(&mut self, i: usize) -> Result<(), StackError> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(i).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let id = new_cluster_id();
        assert_eq!(id.len(), 22);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{id}");
        assert_ne!(id, new_cluster_id());
    }

    #[test]
    fn the_node_listens_on_loopback_only_with_single_replica_internal_topics() {
        let node = Node {
            id: 1,
            dir: PathBuf::from("/x/kafka"),
            port: 9092,
            advertised_port: 9092,
            controller_port: 9093,
            voters: None,
            extra: Vec::new(),
        };
        let p = node.properties();
        for line in [
            "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
            "advertised.listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
            "controller.quorum.bootstrap.servers=127.0.0.1:9093",
            "log.dirs=/x/kafka/data",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "offsets.topic.replication.factor=1",
            "auto.create.topics.enable=false",
        ] {
            assert!(p.lines().any(|l| l == line), "missing {line}");
        }
        assert!(!p.contains("0.0.0.0"));
    }

    #[test]
    fn cluster_nodes_name_the_static_quorum_replicate_internal_topics_three_times_and_advertise_their_proxy() {
        let voters = "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097".to_owned();
        let node = Node {
            id: 2,
            dir: PathBuf::from("/c/node-2"),
            port: 19094,
            advertised_port: 29094,
            controller_port: 19095,
            voters: Some(voters),
            extra: vec!["transaction.partition.verification.enable=false".into()],
        };
        let p = node.properties();
        for line in [
            "transaction.partition.verification.enable=false",
            "node.id=2",
            "controller.quorum.voters=1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097",
            "listeners=PLAINTEXT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095",
            // Clients are sent to the proxy in front of it.
            "advertised.listeners=PLAINTEXT://127.0.0.1:29094,CONTROLLER://127.0.0.1:19095",
            "offsets.topic.replication.factor=3",
            "transaction.state.log.replication.factor=3",
            "transaction.state.log.min.isr=2",
            "default.replication.factor=3",
        ] {
            assert!(p.lines().any(|l| l == line), "missing {line}");
        }
        assert!(!p.contains("controller.quorum.bootstrap.servers"));
    }
}
