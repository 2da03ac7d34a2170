-- A revision's configuration as a template that renders it again with each
-- secret read anew by name (`secret('NAME')`) and the rest verbatim: what
-- `rollback` re-applies. `config_snapshot` stays what is shown.
ALTER TABLE deployments ADD COLUMN config_replay TEXT;

-- A revision recorded before this column replays its snapshot verbatim when
-- that withheld no secret; one that did keeps NULL: its secrets have no
-- names, so it cannot be re-applied with them.
UPDATE deployments
   SET config_replay = '{% raw %}'
       || replace(config_snapshot, 'endraw', 'end{% endraw %}{{ "raw" }}{% raw %}')
       || '{% endraw %}'
 WHERE instr(config_snapshot, '(sensitive)') = 0;
