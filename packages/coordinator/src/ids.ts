import { customAlphabet } from 'nanoid';

/**
 * Identifiers the coordinator makes (model versions, lineages, rounds, jobs, issued client ids): 21 letters and
 * digits, about 125 bits (nanoid's default alphabet less '-' and '_'). Operators paste them into commands
 * (`fedunlearn-coordinator report <job id>`), where an id starting with '-' reads as an option; URL-safe as well.
 */
export const newId: () => string = customAlphabet('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz', 21);
