//! POSIX shell quoting for argv sent as one SSH command string.
//!
//! SSH has no argv: the server hands the command string to the user's login shell (`sh -c`). So every
//! argument is quoted here, and the remote shell splits it back into exactly the same argv.

/// Characters that need no quoting anywhere in a word (POSIX `sh`, bash, dash).
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ',' | ':' | '@' | '%' | '+' | '=')
}

/// Quote one argument for a POSIX shell, single-quote style.
///
/// An argument made only of `[A-Za-z0-9_.,:/@%+=-]` is returned as is (so command lines stay readable and
/// golden strings match what an admin would type); anything else is wrapped in single quotes, with each
/// `'` written as `'\''`. The empty string becomes `''`. Every byte other than NUL survives (spaces,
/// `$`, backquotes, `*`, newlines, non-ASCII); NUL cannot travel in a C string, so executors refuse argv
/// containing it ([`crate::ClonerError::Config`]).
///
/// ```
/// assert_eq!(cloner::shell_quote("/var/lib/vz/images/100/vm-100-disk-0.qcow2"), "/var/lib/vz/images/100/vm-100-disk-0.qcow2");
/// assert_eq!(cloner::shell_quote("my disk"), "'my disk'");
/// assert_eq!(cloner::shell_quote("it's"), r"'it'\''s'");
/// ```
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(is_plain) {
        return arg.to_string();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            out.push_str(r"'\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// [`shell_quote`] for a caller that cannot rely on an executor's argv check (a script composing a
/// `sh -c` line itself): a NUL byte, which no shell argument can carry, is
/// [`crate::ClonerError::Config`] instead of a silently cut argument.
///
/// ```
/// assert_eq!(cloner::checked_shell_quote("it's").unwrap(), r"'it'\''s'");
/// assert!(cloner::checked_shell_quote("a\0b").is_err());
/// ```
pub fn checked_shell_quote(arg: &str) -> Result<String, crate::ClonerError> {
    if arg.contains('\0') {
        return Err(crate::ClonerError::Config(
            "an argument with a NUL byte cannot be passed to a shell".into(),
        ));
    }
    Ok(shell_quote(arg))
}

/// Join argv into one command line for a POSIX shell: each element through [`shell_quote`], separated by
/// single spaces. The first word is also quoted when it contains `=`, so it is never read as a variable
/// assignment.
///
/// ```
/// let argv = ["qemu-img", "info", "--output=json", "/s/a b.qcow2"].map(String::from);
/// assert_eq!(cloner::shell_join(&argv), "qemu-img info --output=json '/s/a b.qcow2'");
/// ```
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 && a.contains('=') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                shell_quote(a)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_unquoted() {
        assert_eq!(shell_quote("qemu-img"), "qemu-img");
        assert_eq!(shell_quote("--output=json"), "--output=json");
        assert_eq!(
            shell_quote("/mnt/pve/nfs-tpl/images/9000/base-9000-disk-0.qcow2"),
            "/mnt/pve/nfs-tpl/images/9000/base-9000-disk-0.qcow2"
        );
    }

    #[test]
    fn special_characters_are_single_quoted() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote("`id`"), "'`id`'");
        assert_eq!(shell_quote("~root"), "'~root'");
        assert_eq!(shell_quote("#x"), "'#x'");
        assert_eq!(shell_quote("a*"), "'a*'");
        assert_eq!(shell_quote("line\nbreak"), "'line\nbreak'");
        assert_eq!(shell_quote("jörg"), "'jörg'");
    }

    #[test]
    fn single_quote_is_closed_escaped_and_reopened() {
        assert_eq!(shell_quote("'"), r"''\'''");
        assert_eq!(shell_quote("O'Brien disk"), r"'O'\''Brien disk'");
    }

    #[test]
    fn first_word_with_equals_is_not_an_assignment() {
        let argv = ["A=b".to_string(), "x=y".to_string()];
        assert_eq!(shell_join(&argv), "'A=b' x=y");
    }

    /// Runs `printf '%s\0' WORDS…` through a real `sh -c` from [`shell_join`]: the line, and what
    /// printf printed split at each NUL (the last part is the empty rest after the last one).
    fn printed_by_sh(words: &[&str]) -> (String, Vec<Vec<u8>>) {
        let mut argv = vec!["printf".to_string(), "%s\\0".to_string()];
        argv.extend(words.iter().map(|s| s.to_string()));
        let line = shell_join(&argv);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}: {out:?}");
        let parts = out.stdout.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
        (line, parts)
    }

    #[test]
    fn quoted_words_survive_a_real_shell() {
        let odd = [
            "plain",
            "with space",
            "it's",
            "'",
            "",
            "$HOME",
            "`id`",
            "a\nb",
            "tab\there",
            "back\\slash",
            "semi;colon",
            "star*",
            "jörg",
        ];
        let (line, got) = printed_by_sh(&odd);
        let got: Vec<String> = got
            .iter()
            .map(|p| String::from_utf8(p.to_vec()).unwrap())
            .collect();
        let mut want: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
        want.push(String::new()); // after the last NUL
        assert_eq!(got, want, "{line}");
    }

    /// Hostile arguments — quotes of both kinds, newlines, command substitution with `$()` and
    /// backquotes, variables, globs, a leading `-`, an `=` in the first word — reach a real `sh -c`
    /// unchanged, one argument each; a NUL byte is refused by the checked quoter and by the executors.
    #[test]
    fn hostile_arguments_round_trip_through_sh_and_nul_is_refused() {
        let hostile = [
            "'; rm -rf / #",
            "\"double\" 'single'",
            "$(touch /tmp/proxlab-quote-pwned)",
            "`touch /tmp/proxlab-quote-pwned`",
            "${IFS}$0$@",
            "line one\nline two\n",
            "-rf",
            "--output=/etc/passwd",
            "-",
            "*",
            "a=b",
            "\\'\\",
            " leading and trailing ",
            "\r\t\x1b[31m",
        ];
        // As the only word after the program, and as the first word (where `=` matters).
        let (line, got) = printed_by_sh(&hostile);
        let want: Vec<&[u8]> = hostile.iter().map(|s| s.as_bytes()).chain([&b""[..]]).collect();
        assert_eq!(got, want, "{line}");
        for arg in hostile {
            assert_eq!(checked_shell_quote(arg).unwrap(), shell_quote(arg));
        }
        assert!(!std::path::Path::new("/tmp/proxlab-quote-pwned").exists());
        let first = shell_join(&["a=b".to_string(), "c".to_string()]);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{first} 2>/dev/null; echo $?"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "127",
            "not an assignment"
        );

        assert!(checked_shell_quote("a\0b").is_err());
        let exec = crate::LocalExecutor::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let argv = ["printf".to_string(), "a\0b".to_string()];
        let refused = rt.block_on(crate::Executor::run(&exec, &argv));
        assert!(
            matches!(refused, Err(crate::ClonerError::Config(_))),
            "{refused:?}"
        );
    }
}
