//! Connections held through `sk-pod tcp-watch`: which backend each reached, which
//! ended and how, which still carry bytes.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use crate::{Pod, Proc, wait_for};

pub struct Watch {
    proc: Proc,
    /// The backend each connection reached, by connection number.
    pub backends: Vec<String>,
    checks: usize,
}

impl Watch {
    /// Opens `count` connections from `pod` to `to` and holds them.
    pub fn start(pod: &Pod, to: SocketAddr, count: usize) -> anyhow::Result<Self> {
        let count_arg = count.to_string();
        let proc = pod.spawn(&["tcp-watch", "--to", &to.to_string(), "--count", &count_arg])?;
        proc.wait_for_log(&format!("held {count}"), Duration::from_secs(10))?;
        let backends = proc
            .log()
            .lines()
            .filter_map(|l| Some(l.strip_prefix("conn ")?.split_whitespace().nth(1)?.to_string()))
            .take(count)
            .collect();
        Ok(Self { proc, backends, checks: 0 })
    }

    /// How many connections reached `backend`.
    pub fn on(&self, backend: &str) -> usize {
        self.backends.iter().filter(|b| *b == backend).count()
    }

    /// How each ended connection ended (`eof`, or the error), by backend.
    pub fn ended(&self) -> BTreeMap<String, Vec<String>> {
        let mut ended: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in self.proc.log().lines() {
            let Some((conn, how)) = line.split_once(" ended: ") else { continue };
            let backend = conn.split_whitespace().nth(2).unwrap_or("").to_string();
            ended.entry(backend).or_default().push(how.to_string());
        }
        ended
    }

    /// Waits until every connection to `backend` has ended; returns how they ended.
    pub fn wait_ended(&self, backend: &str, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let want = self.on(backend);
        wait_for(&format!("the {want} connections to {backend} to end"), timeout, || {
            let ends = self.ended().remove(backend).unwrap_or_default();
            (ends.len() == want).then_some(ends)
        })
    }

    /// Sends a line on every open connection: how many came back whole, by backend.
    pub fn check(&mut self) -> anyhow::Result<BTreeMap<String, usize>> {
        self.proc.send("check")?;
        self.checks += 1;
        let checks = self.checks;
        let log = wait_for("the check to finish", Duration::from_secs(10), || {
            let log = self.proc.log();
            (log.lines().filter(|l| *l == "checked").count() >= checks).then_some(log)
        })?;
        let this_check = log.split("\nchecked\n").nth(checks - 1).unwrap_or("");
        let mut alive: BTreeMap<String, usize> = BTreeMap::new();
        for line in this_check.lines().filter(|l| l.ends_with(" alive")) {
            let backend = line.split_whitespace().nth(2).unwrap_or("").to_string();
            *alive.entry(backend).or_default() += 1;
        }
        Ok(alive)
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}
