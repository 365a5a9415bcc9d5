//! Spotting templates that put a placeholder inside code a shell or an
//! interpreter runs, where passing values as argv elements protects nothing.

use super::{Piece, Prepared};

/// How a program takes code on its command line.
enum Takes {
    /// A shell: with `-c` among its options, its first operand is the script.
    ShellScript,
    /// An interpreter: the code follows one of these short flags (alone, in a
    /// cluster like perl's `-ne`, or glued like `-cprint(1)`) or long flags
    /// (`--eval code`, `--eval=code`).
    CodeAfter {
        short: &'static [char],
        long: &'static [&'static str],
    },
}

const SHELLS: [&str; 15] = [
    "sh", "bash", "rbash", "dash", "ash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "yash", "posh",
    "fish", "csh", "tcsh",
];

fn base_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

fn takes(program: &str) -> Option<Takes> {
    let base = base_name(program);
    if SHELLS.contains(&base) {
        return Some(Takes::ShellScript);
    }
    // `python3.12`, `perl5.36`, `lua5.4`: the family without its version.
    let family = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let (short, long): (&'static [char], &'static [&'static str]) = match family {
        "python" | "pypy" => (&['c'], &[]),
        "perl" => (&['e', 'E'], &[]),
        "node" | "nodejs" => (&['e', 'p'], &["--eval", "--print"]),
        "ruby" | "lua" | "luajit" => (&['e'], &[]),
        "php" => (&['r'], &["--run"]),
        _ => return None,
    };
    Some(Takes::CodeAfter { short, long })
}

fn text(element: &[Piece]) -> Option<&str> {
    match element {
        [Piece::Text(text)] => Some(text),
        _ => None,
    }
}

fn has_placeholder(element: &[Piece]) -> bool {
    element.iter().any(|piece| matches!(piece, Piece::Arg(_)))
}

/// Where the operands of `env`'s own options and assignments begin.
fn env_program_at(args: &[Vec<Piece>]) -> Option<usize> {
    let mut at = 0;
    while let Some(element) = args.get(at) {
        match text(element) {
            Some("--") => return Some(at + 1),
            Some("-u" | "-C" | "--unset" | "--chdir") => at += 2,
            Some(option) if option.starts_with('-') => at += 1,
            _ if matches!(element.first(), Some(Piece::Text(t)) if t.contains('=')) => at += 1,
            _ => return Some(at),
        }
    }
    None
}

/// The argv index (of the whole template) of the first element that holds a
/// placeholder and is code the program, or the program a wrapper such as
/// `env` or `busybox` runs, takes as a script.
pub(super) fn placeholder_in_code(command: &Prepared) -> Option<usize> {
    let mut program = command.program.as_str();
    let mut args = &command.args[..];
    loop {
        let at = match base_name(program) {
            "env" => env_program_at(args)?,
            "busybox" | "toybox" => 0,
            _ => break,
        };
        program = text(args.get(at)?)?;
        args = &args[at + 1..];
    }
    let found = match takes(program)? {
        Takes::ShellScript => shell_script(args),
        Takes::CodeAfter { short, long } => code_after(args, short, long),
    }?;
    // `args` is a tail of the template's arguments, which start at argv[1].
    Some(command.args.len() - args.len() + found + 1)
}

fn shell_script(args: &[Vec<Piece>]) -> Option<usize> {
    let mut saw_c = false;
    let mut at = 0;
    while let Some(element) = args.get(at) {
        let Some(Piece::Text(first)) = element.first() else {
            break;
        };
        if !(first.starts_with('-') || first.starts_with('+')) || first == "-" {
            break;
        }
        match text(element) {
            Some("--") => {
                at += 1;
                break;
            }
            Some("-o" | "+o" | "-O" | "+O") => at += 2,
            _ => {
                saw_c |= !first.starts_with("--") && first[1..].contains('c');
                at += 1;
            }
        }
    }
    (saw_c && has_placeholder(args.get(at)?)).then_some(at)
}

fn code_after(args: &[Vec<Piece>], short: &[char], long: &[&str]) -> Option<usize> {
    let mut at = 0;
    while let Some(element) = args.get(at) {
        let Some(Piece::Text(first)) = element.first() else {
            return None;
        };
        let alone = element.len() == 1;
        let code = if first == "--" && alone {
            return None;
        } else if alone && long.contains(&first.as_str()) {
            at + 1
        } else if long
            .iter()
            .any(|flag| first.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
        {
            at
        } else if first.starts_with("--") {
            at += 1;
            continue;
        } else if let Some(cluster) = first.strip_prefix('-').filter(|c| !c.is_empty()) {
            match cluster.find(short) {
                // Glued: the rest of this element is the code.
                Some(i) if i + 1 < cluster.len() || !alone => at,
                Some(_) => at + 1,
                None => {
                    at += 1;
                    continue;
                }
            }
        } else {
            // The script file: what follows is its own arguments.
            return None;
        };
        if has_placeholder(args.get(code)?) {
            return Some(code);
        }
        at = code + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::exec::tests::command;

    fn found(argv: &[&str]) -> Option<usize> {
        placeholder_in_code(&Prepared::check(&command(argv)).unwrap())
    }

    #[test]
    fn placeholders_inside_shell_scripts_and_interpreter_code_are_found() {
        for (argv, at) in [
            (&["sh", "-c", "ls {dir}"][..], 2),
            (&["/bin/sh", "-c", "{script}"], 2),
            (&["bash", "-euc", "echo {x}"], 2),
            (&["bash", "--norc", "-o", "pipefail", "-c", "a | {x}"], 5),
            (&["dash", "-e", "-c", "echo '{x}'"], 3),
            (&["zsh", "-c", "echo {x}", "zsh", "{y}"], 2),
            (&["ksh93", "-c", "echo {x}"], 2),
            (&["python3", "-c", "print('{x}')"], 2),
            (&["/usr/bin/python3.12", "-Bc", "print({x})"], 2),
            (&["python", "-cprint({x})"], 1),
            (&["perl", "-ne", "print if /{pattern}/", "file"], 2),
            (&["perl", "-e", "1", "-e", "print {x}"], 4),
            (&["node", "-e", "console.log({x})"], 2),
            (&["node", "--eval", "console.log({x})"], 2),
            (&["node", "--eval=console.log({x})"], 1),
            (&["ruby", "-e", "puts {x}"], 2),
            (&["php", "-r", "echo {x};"], 2),
            (&["env", "A=1", "-u", "B", "bash", "-c", "echo {x}"], 6),
            (&["/usr/bin/env", "-i", "python3", "-c", "{code}"], 4),
            (&["busybox", "sh", "-c", "echo {x}"], 3),
        ] {
            assert_eq!(found(argv), Some(at), "{argv:?}");
        }
    }

    #[test]
    fn values_passed_as_their_own_elements_and_other_programs_are_not_flagged() {
        for argv in [
            &["sh", "-c", "ls -- \"$1\"", "sh", "{dir}"][..],
            &["bash", "script.sh", "{x}"],
            &["bash", "-e", "script.sh", "-c", "{x}"],
            &["python3", "-c", "import sys; print(sys.argv[1])", "{x}"],
            &["python3", "script.py", "-c", "{x}"],
            &["python3", "-m", "module", "-c", "{x}"],
            &["perl", "-e", "print $ARGV[0]", "--", "{x}"],
            &["node", "-e", "console.log(process.argv[1])", "{x}"],
            &["env", "X={x}", "printenv", "X"],
            &["ls", "-c", "{x}"],
            &["printf", "%s", "{x}"],
            &["sh", "-c", "true"],
            &["shred", "-c", "{x}"],
        ] {
            assert_eq!(found(argv), None, "{argv:?}");
        }
    }
}
