//! Validation of service definitions and their dependency order.

use std::collections::HashMap;

use super::{ConfigError, ServiceSpec};

/// Services by index into the spec list.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Every service after all of its dependencies; ties keep the definition order so that
    /// boots are predictable.
    pub order: Vec<usize>,
    pub deps: Vec<Vec<usize>>,
    pub dependents: Vec<Vec<usize>>,
}

pub(crate) fn plan(specs: &[ServiceSpec]) -> Result<Plan, ConfigError> {
    let mut index = HashMap::new();
    for (i, spec) in specs.iter().enumerate() {
        let name = spec.name.as_str();
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(ConfigError::InvalidName(spec.name.clone()));
        }
        if index.insert(name, i).is_some() {
            return Err(ConfigError::Duplicate(spec.name.clone()));
        }
        if spec.argv.is_empty() || spec.argv[0].is_empty() {
            return Err(ConfigError::EmptyCommand(spec.name.clone()));
        }
    }

    let mut deps = vec![Vec::new(); specs.len()];
    let mut dependents = vec![Vec::new(); specs.len()];
    for (i, spec) in specs.iter().enumerate() {
        for dep in &spec.depends_on {
            let Some(&d) = index.get(dep.as_str()) else {
                return Err(ConfigError::UnknownDependency {
                    service: spec.name.clone(),
                    dependency: dep.clone(),
                });
            };
            if !deps[i].contains(&d) {
                deps[i].push(d);
                dependents[d].push(i);
            }
        }
    }

    if let Some(cycle) = find_cycle(&deps) {
        return Err(ConfigError::Cycle(
            cycle.into_iter().map(|i| specs[i].name.clone()).collect(),
        ));
    }

    // Kahn's algorithm, always taking the lowest ready index.
    let mut missing: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut done = vec![false; specs.len()];
    let mut order = Vec::with_capacity(specs.len());
    while order.len() < specs.len() {
        let Some(next) = (0..specs.len()).find(|&i| !done[i] && missing[i] == 0) else {
            // Unreachable after find_cycle; reported as a cycle rather than looping.
            let rest = (0..specs.len()).filter(|&i| !done[i]);
            return Err(ConfigError::Cycle(
                rest.map(|i| specs[i].name.clone()).collect(),
            ));
        };
        done[next] = true;
        order.push(next);
        for &d in &dependents[next] {
            missing[d] = missing[d].saturating_sub(1);
        }
    }
    Ok(Plan {
        order,
        deps,
        dependents,
    })
}

/// Returns one cycle as a path that starts and ends with the same service.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; deps.len()];
    for root in 0..deps.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next edge to follow). The stack is the current path.
        let mut stack = vec![(root, 0usize)];
        mark[root] = Mark::OnPath;
        while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
            if let Some(&next) = deps[node].get(*edge) {
                *edge += 1;
                match mark[next] {
                    Mark::New => {
                        mark[next] = Mark::OnPath;
                        stack.push((next, 0));
                    }
                    Mark::OnPath => {
                        let start = stack.iter().position(|&(n, _)| n == next).unwrap_or(0);
                        let mut cycle: Vec<usize> =
                            stack[start..].iter().map(|&(n, _)| n).collect();
                        cycle.push(next);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, deps: &[&str]) -> ServiceSpec {
        let mut s = ServiceSpec::new(name, &["/bin/true"]);
        s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        s
    }

    fn names(specs: &[ServiceSpec], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| specs[i].name.clone()).collect()
    }

    #[test]
    fn orders_dependencies_first_keeping_definition_order() {
        let specs = vec![
            spec("kubelet", &["containerd", "net"]),
            spec("containerd", &[]),
            spec("net", &[]),
            spec("etcd", &["net"]),
        ];
        let plan = plan(&specs).unwrap();
        assert_eq!(
            names(&specs, &plan.order),
            ["containerd", "net", "kubelet", "etcd"]
        );
        assert_eq!(plan.dependents[2], vec![0, 3]);
    }

    #[test]
    fn cycles_are_reported_as_a_path() {
        let specs = vec![spec("a", &["b"]), spec("b", &["c"]), spec("c", &["a"])];
        assert_eq!(
            plan(&specs).unwrap_err(),
            ConfigError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        let specs = vec![spec("x", &[]), spec("self", &["self"])];
        assert_eq!(
            plan(&specs).unwrap_err().to_string(),
            "dependency cycle: self -> self"
        );
    }

    #[test]
    fn bad_definitions() {
        assert_eq!(
            plan(&[spec("a", &["nope"])]).unwrap_err(),
            ConfigError::UnknownDependency {
                service: "a".into(),
                dependency: "nope".into()
            }
        );
        assert_eq!(
            plan(&[spec("a", &[]), spec("a", &[])]).unwrap_err(),
            ConfigError::Duplicate("a".into())
        );
        assert_eq!(
            plan(&[spec("../etc", &[])]).unwrap_err(),
            ConfigError::InvalidName("../etc".into())
        );
        let mut empty = spec("e", &[]);
        empty.argv.clear();
        assert_eq!(
            plan(&[empty]).unwrap_err(),
            ConfigError::EmptyCommand("e".into())
        );
    }

    #[test]
    fn duplicate_dependency_entries_are_harmless() {
        let specs = vec![spec("a", &[]), spec("b", &["a", "a"])];
        let plan = plan(&specs).unwrap();
        assert_eq!(plan.deps[1], vec![0]);
        assert_eq!(plan.dependents[0], vec![1]);
    }
}
