//! A sampled profile of one process, read from `perf script`'s text: folded stacks
//! (`thread;root;…;leaf count`, one line a stack, what flamegraph.pl and speedscope
//! read) and where the time goes, by function and by crate.

use std::collections::{BTreeMap, BTreeSet};

/// Where a frame's code lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    Kernel,
    /// libc, the vDSO and other shared libraries.
    Library,
    /// The program's own binary (or code perf could not place).
    Program,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Frame {
    pub function: String,
    pub place: Place,
}

/// A sampled call stack: the thread's name and its frames, root first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stack {
    pub thread: String,
    pub frames: Vec<Frame>,
}

/// Samples by stack.
#[derive(Debug, Default)]
pub struct Profile {
    pub stacks: BTreeMap<Stack, u64>,
}

/// Samples of a function or a group of them: with it as the leaf (where the CPU was),
/// and with it anywhere on the stack (what it and its callees took).
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    pub name: String,
    pub self_samples: u64,
    pub total_samples: u64,
}

/// Groups of frames by crate (of the function's type, for `<Type as Trait>::f`).
const CRATE_GROUPS: [(&str, &[&str]); 5] = [
    ("sockeye (sockeye, proxy_common)", &["sockeye", "proxy_common"]),
    ("h2", &["h2"]),
    ("hyper (hyper, hyper_util)", &["hyper", "hyper_util"]),
    ("tokio (tokio, mio)", &["tokio", "mio"]),
    ("Rust std (std, core, alloc)", &["std", "core", "alloc"]),
];
const LIBRARIES: &str = "libc and other shared libraries";
const KERNEL: &str = "kernel";
const OTHER: &str = "other (other crates, `main`, frames perf could not name)";

impl Profile {
    /// Reads `perf script`'s default output: blocks separated by blank lines, each a
    /// header (`thread pid time: period event:`) and frames, leaf first, one a line
    /// (`address function+offset (object)`; `(inlined)` for inlined frames).
    pub fn parse(script: &str) -> Self {
        let mut profile = Self::default();
        let mut block = Vec::new();
        for line in script.lines().chain([""]) {
            if !line.trim().is_empty() {
                block.push(line);
                continue;
            }
            if let Some(stack) = Stack::parse(&block) {
                *profile.stacks.entry(stack).or_default() += 1;
            }
            block.clear();
        }
        profile
    }

    pub fn samples(&self) -> u64 {
        self.stacks.values().sum()
    }

    /// Samples whose stack perf could not unwind to the thread's start (it copies a
    /// bounded slice of the stack): their root is a frame it could not name. A share
    /// in total is at least what it says, by up to this much.
    pub fn cut_short(&self) -> u64 {
        let unnamed_root =
            |s: &Stack| s.frames.first().is_some_and(|f| f.function.starts_with('['));
        self.stacks.iter().filter(|(s, _)| unnamed_root(s)).map(|(_, n)| n).sum()
    }

    /// One line a stack, `thread;root;…;leaf count`; kernel frames end in `_[k]`.
    pub fn folded(&self) -> String {
        let mut out = String::new();
        for (stack, count) in &self.stacks {
            let frames = stack.frames.iter().map(|f| match f.place {
                Place::Kernel => format!("{}_[k]", f.function),
                _ => f.function.clone(),
            });
            let line: Vec<String> = std::iter::once(stack.thread.clone()).chain(frames).collect();
            // `;` separates frames: keep it out of names such as `[u8; 16]`.
            let line: Vec<String> = line.iter().map(|f| f.replace(';', ",")).collect();
            out.push_str(&format!("{} {count}\n", line.join(";")));
        }
        out
    }

    /// The `n` functions with the most self samples, most first.
    pub fn top_functions(&self, n: usize) -> Vec<Share> {
        let mut shares = self.shares(|f| f.function.clone());
        shares.sort_by(|a, b| b.self_samples.cmp(&a.self_samples).then(a.name.cmp(&b.name)));
        shares.truncate(n);
        shares
    }

    /// Samples by group: sockeye's own crates, h2, hyper, tokio, Rust's std, shared
    /// libraries, the kernel, and the other crates.
    pub fn groups(&self) -> Vec<Share> {
        let shares = self.shares(|f| group_of(f).to_string());
        let order: Vec<&str> =
            CRATE_GROUPS.iter().map(|(name, _)| *name).chain([LIBRARIES, KERNEL, OTHER]).collect();
        order
            .iter()
            .map(|name| {
                shares.iter().find(|s| s.name == *name).cloned().unwrap_or(Share {
                    name: name.to_string(),
                    self_samples: 0,
                    total_samples: 0,
                })
            })
            .collect()
    }

    /// Both views as markdown tables, shares in percent of all samples.
    pub fn summary(&self, top: usize) -> String {
        let samples = self.samples().max(1) as f64;
        let percent = |n: u64| format!("{:.1}%", n as f64 * 100.0 / samples);
        let rows = |shares: Vec<Share>| -> String {
            shares
                .iter()
                .map(|s| {
                    let name = s.name.replace('|', "\\|");
                    format!(
                        "| {name} | {} | {} |\n",
                        percent(s.self_samples),
                        percent(s.total_samples)
                    )
                })
                .collect()
        };
        format!(
            "| group | self | total |\n|---|---|---|\n{}\n\
             | function (top {top} by self samples) | self | total |\n|---|---|---|\n{}",
            rows(self.groups()),
            rows(self.top_functions(top)),
        )
    }

    /// Self and total samples of each key `key_of` gives a frame.
    fn shares(&self, key_of: impl Fn(&Frame) -> String) -> Vec<Share> {
        let mut by_key: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (stack, &count) in &self.stacks {
            if let Some(leaf) = stack.frames.last() {
                by_key.entry(key_of(leaf)).or_default().0 += count;
            }
            let keys: BTreeSet<String> = stack.frames.iter().map(&key_of).collect();
            for key in keys {
                by_key.entry(key).or_default().1 += count;
            }
        }
        by_key
            .into_iter()
            .map(|(name, (self_samples, total_samples))| Share {
                name,
                self_samples,
                total_samples,
            })
            .collect()
    }
}

impl Stack {
    fn parse(block: &[&str]) -> Option<Self> {
        let (header, frames) = block.split_first()?;
        if header.starts_with(char::is_whitespace) {
            return None;
        }
        // Root first; an inlined frame lives where the next outer frame at its
        // address does.
        let mut outer: Option<(&str, Place)> = None;
        let mut parsed = Vec::new();
        for line in frames.iter().rev() {
            let Some((address, function, object)) = frame_line(line) else { continue };
            let place = match (object, outer) {
                ("inlined", Some((at, place))) if at == address => place,
                _ => place_of(object),
            };
            outer = Some((address, place));
            let function = match function {
                // Named by its object, as flamegraph's stackcollapse-perf.pl does.
                "[unknown]" if object.starts_with('[') => object.to_string(),
                "[unknown]" => format!("[{}]", object.rsplit('/').next().unwrap_or(object)),
                known => known.to_string(),
            };
            parsed.push(Frame { function, place });
        }
        Some(Self { thread: thread_of(header), frames: parsed })
    }
}

/// `address function+0xoffset (object)` → its three parts, the offset dropped.
fn frame_line(line: &str) -> Option<(&str, &str, &str)> {
    let (address, rest) = line.trim().split_once(char::is_whitespace)?;
    let (function, object) = rest.trim().rsplit_once(" (")?;
    let object = object.strip_suffix(')')?;
    let function = match function.rsplit_once("+0x") {
        Some((name, offset)) if u64::from_str_radix(offset, 16).is_ok() => name,
        _ => function,
    };
    Some((address, function, object))
}

/// The thread's name: the header's words before its id (and CPU) and timestamp.
fn thread_of(header: &str) -> String {
    let words: Vec<&str> = header.split_whitespace().collect();
    let is_time =
        |w: &&str| w.strip_suffix(':').is_some_and(|t| t.contains('.') && t.parse::<f64>().is_ok());
    let end = words.iter().position(is_time).unwrap_or(words.len());
    let is_id = |w: &str| {
        let w = w.trim_start_matches('[').trim_end_matches(']');
        !w.is_empty() && w.chars().all(|c| c.is_ascii_digit() || c == '/')
    };
    let mut name = &words[..end];
    while let [rest @ .., last] = name
        && is_id(last)
        && !rest.is_empty()
    {
        name = rest;
    }
    name.join(" ")
}

fn place_of(object: &str) -> Place {
    if object.starts_with("[kernel") {
        Place::Kernel
    } else if object == "[vdso]" || object.contains(".so") {
        Place::Library
    } else {
        Place::Program
    }
}

fn group_of(frame: &Frame) -> &'static str {
    match frame.place {
        Place::Kernel => KERNEL,
        Place::Library => LIBRARIES,
        Place::Program => crate_of(&frame.function)
            .and_then(|krate| {
                CRATE_GROUPS.iter().find(|(_, crates)| crates.contains(&krate)).map(|(n, _)| *n)
            })
            .unwrap_or(OTHER),
    }
}

/// The crate a Rust function is in: its path's first segment; for `<Type as
/// Trait>::f`, the type's crate, or the trait's when the type is a parameter.
fn crate_of(function: &str) -> Option<&str> {
    let bare = function.trim_start_matches(['<', '&', '*']);
    let bare = ["mut ", "const ", "dyn "].iter().fold(bare, |f, p| f.strip_prefix(p).unwrap_or(f));
    let as_trait = bare.split_once(" as ").map_or("", |(_, t)| t);
    [bare, as_trait].into_iter().find_map(|path| {
        let (head, _) = path.split_once("::")?;
        let is_name = !head.is_empty() && head.chars().all(|c| c.is_alphanumeric() || c == '_');
        is_name.then_some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
tokio-runtime-w 14148 12923.334328:    1001001 cpu-clock:pppH: 
\tffffffff82203a31 _raw_spin_unlock_irq+0x11 ([kernel.kallsyms])
\tffffffff81732094 do_epoll_wait+0x1a4 ([kernel.kallsyms])
\t          108f36 epoll_wait+0x56 (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          4a6001 mio::sys::unix::selector::Selector::select+0x91 (inlined)
\t          4a6001 mio::poll::Poll::poll+0x91 (/work/target/release/sockeye)
\t          49912d tokio::runtime::io::driver::Driver::turn+0xcd (/work/target/release/sockeye)

tokio-runtime-w 14148 12923.348063:    1001001 cpu-clock:pppH: 
\t          2063a5 <h2::proto::streams::Streams<B,P> as core::ops::drop::Drop>::drop+0x25 (/work/target/release/sockeye)
\t          2bd51d <&mut F as core::future::future::Future>::poll+0x6d (inlined)
\t          2bd51d sockeye::proxy::forward::{{closure}}+0x6d (/work/target/release/sockeye)
\tffffffffffffffff [unknown] ([unknown])

tokio-runtime-w 14149 12923.349063:    1001001 cpu-clock:pppH: 
\t          2063a5 <h2::proto::streams::Streams<B,P> as core::ops::drop::Drop>::drop+0x25 (/work/target/release/sockeye)
\t          2bd51d <&mut F as core::future::future::Future>::poll+0x6d (inlined)
\t          2bd51d sockeye::proxy::forward::{{closure}}+0x6d (/work/target/release/sockeye)
\tffffffffffffffff [unknown] ([unknown])
";

    #[test]
    fn folds_stacks_root_first_and_counts_repeats() {
        let profile = Profile::parse(SCRIPT);
        assert_eq!(profile.samples(), 3);
        assert_eq!(profile.cut_short(), 2);
        assert_eq!(
            profile.folded(),
            "tokio-runtime-w;[unknown];sockeye::proxy::forward::{{closure}};\
             <&mut F as core::future::future::Future>::poll;\
             <h2::proto::streams::Streams<B,P> as core::ops::drop::Drop>::drop 2\n\
             tokio-runtime-w;tokio::runtime::io::driver::Driver::turn;mio::poll::Poll::poll;\
             mio::sys::unix::selector::Selector::select;epoll_wait;do_epoll_wait_[k];\
             _raw_spin_unlock_irq_[k] 1\n"
        );
    }

    #[test]
    fn shares_count_the_leaf_as_self_and_every_frame_as_total() {
        let profile = Profile::parse(SCRIPT);
        let top = profile.top_functions(2);
        assert_eq!(
            top[0].name,
            "<h2::proto::streams::Streams<B,P> as core::ops::drop::Drop>::drop"
        );
        assert_eq!((top[0].self_samples, top[0].total_samples), (2, 2));
        let group = |name: &str| {
            let groups = profile.groups();
            let g = groups.iter().find(|g| g.name.starts_with(name)).unwrap();
            (g.self_samples, g.total_samples)
        };
        assert_eq!(group("h2"), (2, 2));
        assert_eq!(group("sockeye"), (0, 2));
        assert_eq!(group("Rust std"), (0, 2), "an inlined frame of the program is the program's");
        assert_eq!(group("kernel"), (1, 1));
        assert_eq!(group("libc"), (0, 1));
        assert_eq!(group("tokio"), (0, 1));
    }

    #[test]
    fn names_threads_and_crates() {
        assert_eq!(thread_of("sockeye 14148 12923.334328:    1001001 cpu-clock:pppH:"), "sockeye");
        assert_eq!(thread_of("my thread 7/8 [001] 1.5: 1 cpu-clock:"), "my thread");
        assert_eq!(crate_of("tokio::runtime::park"), Some("tokio"));
        assert_eq!(
            crate_of("<hyper::proto::h2::server::Server<T> as core::future::Future>::poll"),
            Some("hyper")
        );
        assert_eq!(crate_of("<&mut F as core::future::Future>::poll"), Some("core"));
        assert_eq!(crate_of("memcpy"), None);
    }
}
